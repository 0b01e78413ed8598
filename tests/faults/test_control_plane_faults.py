"""kill -9 in the control plane: the Dagster daemon, the Dagster webserver, the MLflow server.

The Dagster tests SIGKILL one child of the service's supervisor and require the supervisor
to start it again while the other child keeps running: after a daemon kill, every daemon
heartbeats again, a run submitted while it was down is launched and succeeds, and the
streaming watchdog sensor ticks again; after a webserver kill, GraphQL answers again with
the code location loaded. The MLflow test kills the server while a training-like loop
registers models: registration fails fast with ``RegistryUnreachable`` (no hang), and
after ``start()`` registration and aliases work and every earlier version is still there.
What each fault cost goes to ``fault_report``. Every test leaves its service running,
since later tests share the session services.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from twotier import registry
from twotier.config import Settings
from twotier.infra.dagster_service import CODE_LOCATION_MODULE, DagsterService
from twotier.infra.service import Service, pid_alive
from twotier.naming import model_name
from twotier.registry import ModelNotFound, ModelVersionRef, RegistryUnreachable

T = TypeVar("T")

DAEMON = "dagster-daemon"
WEBSERVER = "dagster-webserver"
REGISTRY_DOWN_BOUND_S = 60.0
"""A registry call against a dead MLflow server must fail within this (no hang)."""

_LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""

_RUN = """
query Run($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }
"""

_SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 1) { timestamp status } } }
  }
}
"""

_LOCATIONS = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { location { name } } } } }"
)

_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


# -- helpers --------------------------------------------------------------------


def _wait(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = probe()
            if value is not None:
                return value
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _program(pid: int) -> str:
    """``dagster-daemon`` for ``python3 .../bin/dagster-daemon run ...``; '' if gone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    names = [Path(arg.decode()).name for arg in argv[:2]]
    return next((n for n in names if n in (DAEMON, WEBSERVER)), "")


def _children(parent: int) -> dict[str, int]:
    """Live direct children of ``parent`` by program (the supervisor's webserver and daemon)."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[1]) == parent and (program := _program(int(entry))):
            found[program] = int(entry)
    return found


def _sigkill(pid: int, what: str) -> float:
    """SIGKILL one process, wait until it is gone, return the kill's wall-clock time."""
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    _wait(f"{what} (pid {pid}) to exit", lambda: True if not pid_alive(pid) else None, 30)
    return killed_at


def _graphql(service: Service, query: str, variables: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{service.endpoint}/graphql",
        json={"query": query, "variables": variables or {}},
        timeout=30.0,
    )
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def _launch(service: Service, job: str) -> dict[str, str]:
    params = {
        "selector": {
            "repositoryLocationName": CODE_LOCATION_MODULE,
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "runConfigData": {},
    }
    launched = _graphql(service, _LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run: dict[str, str] = launched["run"]
    return run


def _run_status(service: Service, run_id: str) -> str:
    status: str = _graphql(service, _RUN, {"runId": run_id})["runOrError"]["status"]
    return status


def _latest_tick(service: Service, sensor: str) -> float | None:
    selector = {
        "repositoryLocationName": CODE_LOCATION_MODULE,
        "repositoryName": "__repository__",
        "sensorName": sensor,
    }
    found = _graphql(service, _SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    assert found["sensorState"]["status"] == "RUNNING", found
    ticks = found["sensorState"]["ticks"]
    return float(ticks[0]["timestamp"]) if ticks else None


def _heartbeats_after(service: DagsterService, moment: float) -> dict[str, float] | None:
    """Every required daemon's last heartbeat, once all are newer than ``moment``."""
    beats = service.daemon_heartbeats()
    if beats and all(t is not None and t > moment for t in beats.values()):
        return {k: float(v) for k, v in beats.items() if v is not None}
    return None


def _leave_dagster_running(service: DagsterService) -> None:
    """Restart the whole service unless the supervisor runs both children and answers."""
    pid = service.pid()
    complete = pid is not None and set(_children(pid)) == {DAEMON, WEBSERVER}
    if not (complete and service.healthy()):
        service.stop()
        service.start(print)


def _project(settings: Settings) -> str:
    return "movielens" if "movielens" in settings.projects else sorted(settings.projects)[0]


# -- Dagster --------------------------------------------------------------------


def test_sigkill_of_the_dagster_daemon_is_restarted_and_queued_runs_go_on(
    dagster_service: Service, settings: Settings, fault_report: dict[str, dict[str, Any]]
) -> None:
    assert isinstance(dagster_service, DagsterService)
    supervisor = dagster_service.pid()
    assert supervisor is not None, "the dagster service is not running"
    project = _project(settings)
    sensor = f"{project}_streaming_watchdog"
    try:
        before = _children(supervisor)
        assert set(before) == {DAEMON, WEBSERVER}, before
        killed_at = _sigkill(before[DAEMON], DAEMON)
        started = time.monotonic()

        # Submitted while the daemon is down: the queued run coordinator keeps it queued.
        run = _launch(dagster_service, f"{project}_compact_offline_store")
        status_while_down = _run_status(dagster_service, run["runId"])

        new_daemon = _wait(
            "a new dagster-daemon under the supervisor",
            lambda: (
                p
                if (p := _children(supervisor).get(DAEMON)) not in (None, before[DAEMON])
                else None
            ),
            120,
        )
        process_back_s = time.monotonic() - started
        beats = _wait(
            "a heartbeat of every required daemon after the kill",
            lambda: _heartbeats_after(dagster_service, killed_at),
            240,
            every=1.0,
        )
        heartbeat_back_s = time.monotonic() - started
        final = _wait(
            f"run {run['runId']} to finish",
            lambda: s if (s := _run_status(dagster_service, run["runId"])) in _DONE else None,
            300,
            every=1.0,
        )
        run_done_s = time.monotonic() - started
        tick = _wait(
            f"a tick of {sensor} after the restart",
            lambda: t if (t := _latest_tick(dagster_service, sensor)) and t > killed_at else None,
            240,
            every=2.0,
        )
        sensor_tick_s = time.monotonic() - started

        after = _children(supervisor)
        assert dagster_service.pid() == supervisor, "the supervisor itself was replaced"
        assert after == {DAEMON: new_daemon, WEBSERVER: before[WEBSERVER]}, (before, after)
        assert status_while_down in {"QUEUED", "NOT_STARTED", "STARTING"}, status_while_down
        assert final == "SUCCESS", f"run {run['runId']} ended {final}"
        assert all(t > killed_at for t in beats.values()), beats
        assert tick > killed_at
    finally:
        _leave_dagster_running(dagster_service)
    fault_report["dagster_daemon_sigkill"] = {
        "component": "dagster-daemon (child of the dagster supervisor)",
        "seconds_to_new_daemon_process": round(process_back_s, 2),
        "seconds_to_heartbeat_of_every_daemon": round(heartbeat_back_s, 2),
        "daemons_heartbeating": sorted(beats),
        "run_submitted_while_down": f"{project}_compact_offline_store",
        "run_status_while_down": status_while_down,
        "run_status": final,
        "run_succeeded": final == "SUCCESS",
        "seconds_kill_to_run_success": round(run_done_s, 2),
        "seconds_kill_to_sensor_tick": round(sensor_tick_s, 2),
        "webserver_survived": True,
    }


def test_sigkill_of_the_dagster_webserver_is_restarted_and_answers_again(
    dagster_service: Service, settings: Settings, fault_report: dict[str, dict[str, Any]]
) -> None:
    assert isinstance(dagster_service, DagsterService)
    supervisor = dagster_service.pid()
    assert supervisor is not None, "the dagster service is not running"
    try:
        before = _children(supervisor)
        assert set(before) == {DAEMON, WEBSERVER}, before
        _sigkill(before[WEBSERVER], WEBSERVER)
        started = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{dagster_service.endpoint}/graphql", json={"query": "{ version }"})

        new_server = _wait(
            "a new dagster-webserver under the supervisor",
            lambda: (
                p
                if (p := _children(supervisor).get(WEBSERVER)) not in (None, before[WEBSERVER])
                else None
            ),
            120,
        )
        process_back_s = time.monotonic() - started
        version = _wait(
            "GraphQL to answer again",
            lambda: _graphql(dagster_service, "{ version }")["version"] or None,
            240,
        )
        graphql_back_s = time.monotonic() - started
        locations = _graphql(dagster_service, _LOCATIONS)["repositoriesOrError"]["nodes"]
        ui = httpx.get(f"{dagster_service.endpoint}/", timeout=10.0)

        after = _children(supervisor)
        assert after == {DAEMON: before[DAEMON], WEBSERVER: new_server}, (before, after)
        assert version
        assert {n["location"]["name"] for n in locations} == {CODE_LOCATION_MODULE}
        assert ui.status_code == 200 and "<html" in ui.text.lower()
    finally:
        _leave_dagster_running(dagster_service)
    fault_report["dagster_webserver_sigkill"] = {
        "component": "dagster-webserver (child of the dagster supervisor)",
        "seconds_to_new_webserver_process": round(process_back_s, 2),
        "seconds_to_graphql_answering": round(graphql_back_s, 2),
        "code_location_loaded": True,
        "daemon_survived": True,
    }


# -- MLflow ---------------------------------------------------------------------


def _identity() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _register(uri: str, name: str) -> ModelVersionRef:
    return registry.register_onnx(
        _identity(),
        tracking_uri=uri,
        name=name,
        feature_names=["a", "b"],
        experiment="faults",
        metrics={"auc": 0.5},
        tags={"twotier.tier": "tier2"},
    )


class TrainingLoop(threading.Thread):
    """Registers a new version of ``name`` after each short 'training' step until stopped."""

    def __init__(self, uri: str, name: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.name = uri, name
        self.registered: list[ModelVersionRef] = []
        self.error: BaseException | None = None
        self.failed_at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            time.sleep(0.2)  # the training step
            try:
                self.registered.append(_register(self.uri, self.name))
            except BaseException as exc:
                self.failed_at, self.error = time.monotonic(), exc
                return


def _sigkill_group(service: Service) -> float:
    """SIGKILL the service's whole process group, as a crash of its host would."""
    pid = service.pid()
    assert pid is not None, f"{service.name} is not running"
    killed = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait(f"{service.name} (pid {pid}) to exit", lambda: True if not pid_alive(pid) else None, 30)
    return killed


def test_sigkill_of_mlflow_fails_registration_fast_and_keeps_every_version(
    mlflow_server: Service, fault_report: dict[str, dict[str, Any]]
) -> None:
    uri = mlflow_server.endpoint
    name = model_name("faults", "tier2", f"ranker{uuid.uuid4().hex[:6]}")
    first = _register(uri, name)
    loop = TrainingLoop(uri, name)
    try:
        loop.start()
        _wait(
            "two registrations in the training loop", lambda: len(loop.registered) >= 2 or None, 120
        )
        killed_at = _sigkill_group(mlflow_server)
        loop.join(REGISTRY_DOWN_BOUND_S + 30)
        assert not loop.is_alive(), "registration hung after the MLflow server was killed"
        assert loop.failed_at is not None
        in_flight_failed_s = loop.failed_at - killed_at

        down_started = time.monotonic()
        with pytest.raises(RegistryUnreachable) as register_error:
            _register(uri, name)
        register_down_s = time.monotonic() - down_started
        down_started = time.monotonic()
        with pytest.raises(ModelNotFound) as resolve_error:
            registry.resolve(uri, name, "champion")
        resolve_down_s = time.monotonic() - down_started
        with pytest.raises(RegistryUnreachable) as alias_error:
            registry.set_alias(uri, name, "champion", first.version)
    finally:
        loop.halt.set()
        restart_started = time.monotonic()
        mlflow_server.start(print)
        restarted_s = time.monotonic() - restart_started

    assert isinstance(loop.error, RegistryUnreachable), repr(loop.error)
    assert in_flight_failed_s < REGISTRY_DOWN_BOUND_S, in_flight_failed_s
    assert register_down_s < REGISTRY_DOWN_BOUND_S, register_down_s
    assert resolve_down_s < REGISTRY_DOWN_BOUND_S, resolve_down_s
    for error in (register_error.value, alias_error.value):
        assert uri in str(error) and "did not answer" in str(error) and "Fix:" in str(error)
    assert "did not answer" in str(resolve_error.value), str(resolve_error.value)

    recovered_started = time.monotonic()
    again = _register(uri, name)
    recovered_s = time.monotonic() - recovered_started
    assert registry.resolve(uri, name, "champion").version == again.version
    earlier = [first, *loop.registered]
    stored = {mv.version for mv in registry.client(uri).search_model_versions(f"name='{name}'")}
    assert {ref.version for ref in earlier} <= stored, (earlier, stored)
    assert int(again.version) > max(int(ref.version) for ref in earlier)
    registry.set_alias(uri, name, "champion", first.version)
    assert registry.resolve(uri, name, "champion").version == first.version
    assert registry.get_version(uri, name, loop.registered[-1].version).feature_names == ("a", "b")
    stored_graph = onnx.load_model_from_string(registry.load_onnx_bytes(uri, name, first.version))
    assert [node.op_type for node in stored_graph.graph.node] == ["Identity"]

    fault_report["mlflow_server_sigkill"] = {
        "component": "mlflow server (whole process group)",
        "versions_before_kill": len(earlier),
        "versions_kept": True,
        "seconds_kill_to_in_flight_registration_failing": round(in_flight_failed_s, 2),
        "seconds_register_onnx_failing_while_down": round(register_down_s, 2),
        "seconds_resolve_failing_while_down": round(resolve_down_s, 2),
        "failed_while_down": {
            "register_onnx": type(register_error.value).__name__,
            "resolve": type(resolve_error.value).__name__,
            "set_alias": type(alias_error.value).__name__,
        },
        "seconds_start_to_healthy": round(restarted_s, 2),
        "seconds_first_registration_after_restart": round(recovered_s, 2),
    }
