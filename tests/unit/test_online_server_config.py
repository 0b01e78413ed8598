"""Choosing the local MongoDB-wire server: SecantusDB by default, FerretDB as the alternative."""

from __future__ import annotations

from pathlib import Path

import pytest

from twotier.config import ConfigError, Settings, load_settings
from twotier.infra.secantusdb import SecantusDBService
from twotier.infra.service import StackError
from twotier.infra.stack import Stack, make_service
from twotier.online_store.mongodb import (
    DECLARED_CAPABILITIES,
    MongoDBOnlineStore,
    declared_capabilities,
)


def test_secantusdb_is_the_default_online_server(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.local_online_server == "secantusdb"
    assert settings.online_server_kind == "secantusdb"
    assert settings.online_store_uri == "mongodb://127.0.0.1:27017/"
    assert [s.name for s in Stack(settings).services] == [
        "kafka",
        "secantusdb",
        "mlflow",
        "dagster",
        "ray",
    ]
    assert make_service("online_store", settings).name == "secantusdb"


def test_ferretdb_is_chosen_in_configuration(tmp_path: Path) -> None:
    config = tmp_path / "twotier.yaml"
    config.write_text("stack:\n  online_server: ferretdb\n")
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.online_store_uri == f"mongodb://127.0.0.1:{settings.ferretdb.port}/"
    assert settings.online_server_kind == "ferretdb"
    assert [s.name for s in Stack(settings).services][1] == "ferretdb"
    caps = declared_capabilities(settings, replica_set=False)
    assert not caps.bulk_upsert and not caps.indexed_in and caps.statements_per_command == 50


def test_an_explicit_server_in_the_service_list_wins(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, stack={"services": ["kafka", "ferretdb"]})
    assert settings.local_online_server == "ferretdb"
    assert [s.name for s in Stack(settings).services] == ["kafka", "ferretdb"]


def test_a_uri_means_a_real_mongodb_unless_told(tmp_path: Path) -> None:
    uri = "mongodb://db1.example:27017,db2.example:27017/?replicaSet=rs0"
    settings = load_settings(data_dir=tmp_path, online_store={"uri": uri})
    assert settings.online_store_uri == uri
    assert settings.online_server_kind == "mongodb"
    assert declared_capabilities(settings, replica_set=True) == DECLARED_CAPABILITIES["mongodb"]
    # A standalone mongod has neither transactions nor change streams.
    standalone = declared_capabilities(settings, replica_set=False)
    assert not standalone.transactions and not standalone.change_streams
    # No local server is started for it.
    assert "secantusdb" not in [s.name for s in Stack(settings).services]
    told = load_settings(data_dir=tmp_path, online_store={"uri": uri, "server": "ferretdb"})
    assert told.online_server_kind == "ferretdb"


def test_capability_overrides_apply_one_by_one(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, online_store={"capabilities": {"union_reads": False}}
    )
    caps = declared_capabilities(settings, replica_set=True)
    assert not caps.union_reads
    assert caps.bulk_upsert  # the rest stays as declared


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("TWOTIER_STACK__ONLINE_SERVER", "mongod"),
        ("TWOTIER_ONLINE_STORE__SERVER", "postgres"),
        ("TWOTIER_SECANTUSDB__CACHE_SIZE", "lots"),
    ],
)
def test_bad_server_settings_are_refused(
    env: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=value):
        load_settings(data_dir=tmp_path)


def test_secantusdb_runs_durable_on_loopback_with_its_own_config(settings: Settings) -> None:
    service = SecantusDBService(settings)
    cmd = service.command()
    assert "--host=127.0.0.1" in cmd
    assert f"--port={settings.secantusdb.port}" in cmd
    assert f"--storage-path={service.data_dir / 'data'}" in cmd
    assert f"--config={service.data_dir / 'secantusd.toml'}" in cmd  # no auto-discovery
    assert "--sync-on-commit" in cmd
    assert (
        service.binary == service.cache_dir / settings.secantusdb.version / "bin" / "secantusd-rs"
    )
    fast = settings.model_copy(
        update={"secantusdb": settings.secantusdb.model_copy(update={"sync_on_commit": False})}
    )
    assert "--sync-on-commit" not in SecantusDBService(fast).command()


def test_missing_cargo_is_a_stack_error_with_a_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fresh = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    with pytest.raises(StackError, match=r"secantusdb: cargo is not on PATH.* Fix: install Rust"):
        SecantusDBService(fresh).install()


def test_the_cache_lives_outside_the_clone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = load_settings(data_dir=tmp_path / "data")
    assert settings.cache == tmp_path / "xdg" / "twotier"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert load_settings(data_dir=tmp_path).cache == Path("~/.cache/twotier").expanduser()


def test_the_client_write_concern_is_kept_and_journaled() -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(
        "mongodb://127.0.0.1:1/?w=majority", connect=False
    )
    store = MongoDBOnlineStore(client, "db", journal=True)
    assert store._db.write_concern.document == {"w": "majority", "j": True}
    plain = MongoDBOnlineStore(client, "db", journal=False)
    assert plain._db.write_concern.document == {"w": "majority"}
    client.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ["SecantusDB 0.5.3-beta.196 at mongodb://127.0.0.1:27017/", "GPL-2.0-only"]),
        ({"TWOTIER_STACK__ONLINE_SERVER": "ferretdb"}, ["FerretDB v1.24.2", "Apache-2.0"]),
        (
            {"TWOTIER_ONLINE_STORE__URI": "mongodb://db.example:27017/?replicaSet=rs0"},
            ["online store: mongodb://db.example:27017/?replicaSet=rs0", "declared as mongodb"],
        ),
    ],
)
def test_twotier_status_names_the_online_store_server(
    env: dict[str, str], expected: list[str], tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from twotier.infra.cli import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["status"], env={"TWOTIER_DATA_DIR": str(tmp_path), **env})
    assert result.exit_code == 1, result.output  # nothing runs here: not healthy
    for text in [*expected, "not healthy:"]:
        assert text in result.output
    assert all(len(line) <= 80 for line in result.output.splitlines()), result.output


def test_status_from_another_folder_finds_the_last_stack_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from twotier.infra.cli import LAST_STACK, register

    stack_dir = tmp_path / "repo" / ".twotier"
    (stack_dir / "run").mkdir(parents=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / LAST_STACK).write_text(json.dumps({"data_dir": str(stack_dir)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TWOTIER_DATA_DIR", raising=False)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["status"], env={"TWOTIER_CACHE_DIR": str(cache)})
    assert "showing the last one started" in result.output, result.output
    assert str(stack_dir) in result.output.replace("\n", "")
