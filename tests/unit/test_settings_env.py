"""Settings.to_env: a child process rebuilds the same settings from TWOTIER_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from twotier.config import load_settings


def test_to_env_round_trips_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./twotier.yaml in sight
    original = load_settings(
        data_dir=tmp_path / "data",
        kafka={"port": 19092},
        ray={"gcs_port": 16379, "object_store_mb": 100},
        stack={"services": ["mlflow", "ray"], "start_timeout_s": 12.5},
    )
    env = original.to_env()

    assert env["TWOTIER_DATA_DIR"] == str(tmp_path / "data")
    assert env["TWOTIER_CACHE_DIR"] == str(original.cache)
    assert env["TWOTIER_RAY__GCS_PORT"] == "16379"
    assert env["TWOTIER_STACK__SERVICES"] == '["mlflow", "ray"]'
    assert "TWOTIER_MLFLOW__TRACKING_URI" not in env  # None stays unset

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rebuilt = load_settings()

    assert rebuilt.cache == original.cache
    assert rebuilt.model_dump(exclude={"cache_dir"}) == original.model_dump(exclude={"cache_dir"})


def test_to_env_wins_over_the_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "twotier.yaml"
    config.write_text("mlflow:\n  port: 5555\n")
    original = load_settings(path=config, mlflow={"port": 6000})
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)

    assert load_settings(path=config).mlflow.port == 6000
