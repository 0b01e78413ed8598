"""Configuration: defaults, YAML, environment precedence, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from twotier.config import ConfigError, load_settings


def test_defaults_point_at_the_local_stack_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    s = load_settings()
    assert s.data_dir == tmp_path / ".twotier"
    assert s.cache == Path("~/.cache/twotier").expanduser()  # shared by every clone
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.online_store_uri == "mongodb://127.0.0.1:27017/"
    assert s.offline_store_dsn == f"chdb://{tmp_path / '.twotier' / 'offline'}"
    assert s.mlflow.uri == "http://127.0.0.1:5000"
    assert s.ray.serve_port == 8000 and s.dagster.port == 3000


def test_yaml_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text("kafka:\n  port: 19092\n  heap_mb: 256\nmlflow:\n  port: 5555\n")
    monkeypatch.setenv("TWOTIER_KAFKA__PORT", "29092")
    s = load_settings(cfg)
    assert s.kafka.port == 29092  # environment beats the file
    assert s.kafka.heap_mb == 256  # the file still fills the rest of the section
    assert s.mlflow.port == 5555
    assert load_settings(cfg, mlflow={"port": 6000}).mlflow.port == 6000


def test_env_var_expansion_in_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text("offline_store:\n  dsn: ${CH_DSN:-http://127.0.0.1:8123}\n")
    assert load_settings(cfg).offline_store_dsn == "http://127.0.0.1:8123"
    monkeypatch.setenv("CH_DSN", "http://db:8123")
    assert load_settings(cfg).offline_store_dsn == "http://db:8123"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:\n  port: nope\n", "kafka.port"),
        ("kafka:\n  port: 70000\n", "kafka.port"),
        ("kafak:\n  port: 1\n", "kafak: unknown field"),
        ("online_store:\n  type: redis\n", "online_store"),
        ("stack:\n  services: [kafka, postgres]\n", "stack.services"),
        ("project: Bad-Name\n", "project"),
        ("- a list\n", "top level must be a mapping"),
        ("kafka: [unclosed\n", "not valid YAML"),
        ("mlflow:\n  tracking_uri: ${NOT_SET_ANYWHERE}\n", "NOT_SET_ANYWHERE"),
    ],
)
def test_bad_values_name_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert str(cfg) in message
    assert expected in message


def test_allowed_values_are_listed(tmp_path: Path) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text("stack:\n  services: [kafka, postgres]\n")
    with pytest.raises(ConfigError, match="secantusdb"):
        load_settings(cfg)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_bad_environment_value_names_the_variable_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOTIER_RAY__SERVE_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"ray\.serve_port"):
        load_settings()
