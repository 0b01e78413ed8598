"""The real Dagster service: webserver GraphQL, daemon heartbeats, one process group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from twotier.config import Settings
from twotier.infra.dagster_service import CODE_LOCATION_MODULE, DagsterService
from twotier.infra.service import Service, pid_alive


def _graphql(service: Service, query: str) -> dict[str, Any]:
    response = httpx.post(f"{service.endpoint}/graphql", json={"query": query}, timeout=10.0)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def _group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[2]) == pgid:
            members.append(int(entry))
    return members


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _program(pid: int) -> str:
    """The script a process runs (``dagster-daemon`` for ``python3 .../dagster-daemon run``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(argv[1].decode()).name if len(argv) > 1 else ""


def test_webserver_serves_the_code_location(dagster_service: Service) -> None:
    data = _graphql(
        dagster_service,
        "{ version repositoriesOrError { ... on RepositoryConnection"
        " { nodes { name location { name } } } } }",
    )
    assert data["version"]
    locations = {node["location"]["name"] for node in data["repositoriesOrError"]["nodes"]}
    assert locations == {CODE_LOCATION_MODULE}


def test_daemon_heartbeats_and_runs_are_queued(dagster_service: Service) -> None:
    assert isinstance(dagster_service, DagsterService)
    statuses = dagster_service.daemon_statuses()
    assert statuses["QUEUED_RUN_COORDINATOR"] is True
    assert statuses["SCHEDULER"] is True and statuses["SENSOR"] is True
    assert all(statuses.values()), statuses

    data = _graphql(
        dagster_service,
        "{ instance { runQueuingSupported concurrencyLimits { concurrencyKey slotCount } } }",
    )
    assert data["instance"]["runQueuingSupported"] is True
    limits = {c["concurrencyKey"]: c["slotCount"] for c in data["instance"]["concurrencyLimits"]}
    assert limits["offline_store"] == 1


def test_instance_config_and_stack_environment(
    dagster_service: Service, settings: Settings
) -> None:
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["storage"]["sqlite"]["base_dir"].startswith(str(settings.dagster_home))

    pid = dagster_service.pid()
    assert pid is not None
    servers = [p for p in _group(pid) if _program(p) == "dagster-webserver"]
    daemons = [p for p in _group(pid) if _program(p) == "dagster-daemon"]
    assert len(servers) == 1 and len(daemons) == 1
    for child in servers + daemons:
        env = _environ(child)
        assert env["DAGSTER_HOME"] == str(settings.dagster_home)
        assert env["TWOTIER_DATA_DIR"] == str(settings.data_dir)
        assert env["TWOTIER_CACHE_DIR"] == str(settings.cache)
        assert env["TWOTIER_MLFLOW__PORT"] == str(settings.mlflow.port)
        assert env["TWOTIER_RAY__SERVE_PORT"] == str(settings.ray.serve_port)


def test_a_dead_daemon_is_restarted_and_stop_leaves_nothing(
    dagster_service: Service,
) -> None:
    pid = dagster_service.pid()
    assert pid is not None
    daemon = next(p for p in _group(pid) if _program(p) == "dagster-daemon")
    try:
        os.kill(daemon, signal.SIGKILL)
        deadline = time.monotonic() + 60
        restarted: list[int] = []
        while not restarted and time.monotonic() < deadline:
            time.sleep(0.5)
            restarted = [p for p in _group(pid) if _program(p) == "dagster-daemon" and p != daemon]
        assert restarted, "the supervisor did not restart its daemon"
        assert dagster_service.pid() == pid and dagster_service.running()

        dagster_service.stop()
        assert not pid_alive(pid)
        assert _group(pid) == []  # webserver, daemon and code servers went with it
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{dagster_service.endpoint}/server_info", timeout=2.0)
    finally:
        dagster_service.start()  # leave the session fixture as it was
