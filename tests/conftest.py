"""Shared fixtures: one per real service, each started through the project's infra code.

Tests use their own data folder and a block of ports (from 20000) so they never
touch a stack started with ``twotier up``; downloads and builds come from the shared cache.

Environment:
    TWOTIER_TEST_DATA_DIR: data folder of the test stack (default ``.twotier-test``).
    TWOTIER_TEST_PORT_BASE: first port of the test stack's block of 300 (default 20000).
    TWOTIER_TEST_CACHE_DIR: cache folder (default: the settings' cache, ``~/.cache/twotier``,
        shared with ``twotier up`` and every clone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from twotier.config import Settings, load_settings
from twotier.infra.service import Service
from twotier.infra.stack import make_service

REPO = Path(__file__).resolve().parent.parent
MOVIELENS = (REPO.parent / "shared" / "datasets" / "movielens-small").resolve()


def port_block(base: int) -> dict[str, dict[str, int]]:
    """Ports of one test stack in ``[base, base + 300)``: blocks 300 apart never overlap.

    Ray takes ``base + 100`` for its GCS and the 200 ports above it (node and worker ports).
    """
    return {
        "kafka": {"port": base, "controller_port": base + 1},
        "ferretdb": {"port": base + 2},
        "secantusdb": {"port": base + 6},
        "mlflow": {"port": base + 3},
        "dagster": {"port": base + 4},
        "ray": {"serve_port": base + 5, "gcs_port": base + 100},
    }


def test_settings(data_dir: Path | None = None, port_base: int | None = None) -> Settings:
    """Settings of a test stack: its own data folder and port block, the shared cache."""
    base = port_base or int(os.environ.get("TWOTIER_TEST_PORT_BASE", "20000"))
    data = data_dir or Path(os.environ.get("TWOTIER_TEST_DATA_DIR", REPO / ".twotier-test"))
    cache_env = os.environ.get("TWOTIER_TEST_CACHE_DIR")
    cache_dir = Path(cache_env) if cache_env else None
    return load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data,
        cache_dir=cache_dir,
        **port_block(base),
    )


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def make_test_settings() -> Callable[..., Settings]:
    """``test_settings`` as a fixture, for tests that need a second stack."""
    return test_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the test stack (own data folder and ports, shared cache)."""
    return test_settings()


@pytest.fixture(scope="session")
def movielens() -> Path:
    """The MovieLens small data set in ../shared (never copied into the repo)."""
    if not (MOVIELENS / "ratings.csv").exists():
        pytest.fail(f"MovieLens data not found at {MOVIELENS}")
    return MOVIELENS


def _service(name: str, settings: Settings) -> Iterator[Service]:
    service = make_service(name, settings)
    service.start(print)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Iterator[Service]:
    """A real Kafka 4 broker (KRaft) on loopback."""
    yield from _service("kafka", settings)


@pytest.fixture(scope="session")
def secantusdb(settings: Settings) -> Iterator[Service]:
    """A real SecantusDB ``secantusd-rs`` (MongoDB wire protocol, WiredTiger) on loopback."""
    yield from _service("secantusdb", settings)


@pytest.fixture(scope="session")
def ferretdb(settings: Settings) -> Iterator[Service]:
    """A real FerretDB v1 (MongoDB wire protocol, SQLite) on loopback."""
    yield from _service("ferretdb", settings)


@pytest.fixture(scope="session")
def online_server(request: pytest.FixtureRequest, settings: Settings) -> Service:
    """The local MongoDB-wire server the settings choose (``stack.online_server``)."""
    service: Service = request.getfixturevalue(settings.local_online_server)
    return service


@pytest.fixture(scope="session")
def mlflow_server(settings: Settings) -> Iterator[Service]:
    """A real MLflow tracking server and registry on loopback."""
    yield from _service("mlflow", settings)


@pytest.fixture(scope="session")
def dagster_service(settings: Settings) -> Iterator[Service]:
    """The Dagster webserver and daemon on the project's code location."""
    yield from _service("dagster", settings)


@pytest.fixture(scope="session")
def ray_cluster(settings: Settings) -> Iterator[Service]:
    """A local Ray head node with Serve HTTP on loopback."""
    yield from _service("ray", settings)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder: tests/unit → unit, tests/integration → integration, tests/e2e → e2e."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration", "e2e", "faults"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every IPv4/IPv6 TCP socket in LISTEN state owned by process ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            hex_ip, hex_port = fields[1].split(":")
            if width == 8:
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(hex_ip)))
            else:
                ip = "v6:" + hex_ip
            found.add((ip, int(hex_port, 16)))
    return found


@pytest.fixture(scope="session")
def listening_addresses() -> Callable[[int], set[tuple[str, int]]]:
    """A function: pid -> the (ip, port) pairs that process listens on (from /proc)."""
    return _listening_addresses


# -- fault tests (tests/faults): what each kill -9 costs ---------------------------------

FAULT_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "faults.json"


@pytest.fixture(scope="session")
def fault_report() -> Iterator[dict[str, dict[str, Any]]]:
    """Per fault, what it cost; merged into ``bench/results/faults.json`` at the end."""
    report: dict[str, dict[str, Any]] = {}
    yield report
    if not report:
        return
    merged = json.loads(FAULT_RESULTS.read_text()) if FAULT_RESULTS.exists() else {}
    merged.setdefault("faults", {}).update(report)
    merged["note"] = (
        "Each fault is a SIGKILL of one component during streaming or serving on the "
        "local stack (2 shared cores); seconds are wall time, measured once per run."
    )
    FAULT_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    FAULT_RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
