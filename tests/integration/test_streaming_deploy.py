"""The streaming deploy job and its watchdog on real Kafka, FerretDB and Spark.

The deploy job starts the online feature job as a detached process; a second deploy
leaves it alone; after kill -9 the watchdog asks for a deploy that starts a new one; a
stalled job whose lag keeps growing is restarted; ``twotier stream-stop`` ends it and
nothing of it is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from twotier.config import Settings
from twotier.feature_jobs.detached import (
    OnlineProcess,
    group_members,
    pid_path,
    read_process,
    running_process,
    stop_online,
)
from twotier.feature_jobs.status import read_status
from twotier.infra.service import Service
from twotier.pipelines.jobs import make_deploy_streaming_job
from twotier.pipelines.resources import make_resources
from twotier.pipelines.sensors import make_streaming_watchdog_sensor
from twotier.replay import replay_movielens

START_TIMEOUT_S = 240.0
TWOTIER = str(Path(sys.executable).parent / "twotier")


def _twotier(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``twotier`` command, with this process's (test stack) environment."""
    return subprocess.run(
        [TWOTIER, *args], capture_output=True, text=True, timeout=180, check=False
    )


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def stack(
    settings: Settings,
    kafka: Service,
    online_server: Service,
    movielens: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Settings, str]]:
    """A fresh project declared in the environment (as the Dagster code location sees it)."""
    project = f"deploy_{uuid.uuid4().hex[:8]}"
    declared = settings.model_copy(
        update={"projects": {**settings.projects, project: settings.projects["movielens"]}}
    )
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    for key, value in declared.to_env().items():
        monkeypatch.setenv(key, value)
    replay_movielens(declared, project, movielens, limit=300)
    yield declared, project
    stop_online(declared, project)


def _deploy(
    settings: Settings, project: str, instance: dg.DagsterInstance, **config: Any
) -> tuple[int, dict[str, Any]]:
    job = make_deploy_streaming_job(project)
    result = job.execute_in_process(
        run_config={"ops": {f"{project}_start_online_job": {"config": config}}},
        resources=make_resources(settings),
        instance=instance,
    )
    assert result.success
    [materialization] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in materialization.step_output_data.metadata.items()}
    return int(result.output_for_node(f"{project}_start_online_job")), metadata


def _tick(
    sensor: dg.SensorDefinition, settings: Settings, instance: dg.DagsterInstance, cursor: Any
) -> dg.SensorExecutionData:
    resources = make_resources(settings)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def _processed_after(settings: Settings, project: str, since_ms: int) -> bool:
    status = read_status(settings, project) or {}
    return (
        status.get("state") == "running"
        and int(status.get("updated_at_ms", 0)) >= since_ms
        and status.get("lag") == 0
    )


def _gone(process: OnlineProcess) -> bool:
    return not process.alive() and not group_members(process.pid)


def test_deploy_watchdog_restart_and_stop(stack: tuple[Settings, str], movielens: Path) -> None:
    settings, project = stack
    instance = dg.DagsterInstance.ephemeral()
    sensor = make_streaming_watchdog_sensor(
        project, make_deploy_streaming_job(project), growth_evaluations=2
    )

    # Not deployed yet: the watchdog does nothing.
    idle = _tick(sensor, settings, instance, None)
    assert not idle.run_requests and idle.skip_message and "not deployed" in idle.skip_message

    # Deploy: a detached Spark job that really consumes the topic.
    t0 = int(time.time() * 1000)
    pid, first = _deploy(settings, project, instance)
    assert first["started"] is True
    process = running_process(settings, project)
    assert process is not None and process.pid == pid
    assert os.getpgid(pid) == pid  # its own session: it outlives the Dagster run
    _wait(lambda: _processed_after(settings, project, t0), START_TIMEOUT_S, "the first batches")

    # A second deploy leaves the running job alone.
    again, second = _deploy(settings, project, instance)
    assert again == pid and second["started"] is False
    healthy = _tick(sensor, settings, instance, None)
    assert not healthy.run_requests
    assert healthy.skip_message and f"pid {pid} runs, lag 0" in healthy.skip_message

    # kill -9: the watchdog asks for a deploy, which starts a new process.
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not process.alive(), 30, "the killed job to go")
    dead = _tick(sensor, settings, instance, healthy.cursor)
    [request] = dead.run_requests or []
    assert request.run_config["ops"][f"{project}_start_online_job"]["config"] == {
        "restart": False,
        "reason": f"watchdog: process {pid} is gone",
    }
    t1 = int(time.time() * 1000)
    op_config = request.run_config["ops"][f"{project}_start_online_job"]["config"]
    new_pid, restarted = _deploy(settings, project, instance, **op_config)
    assert new_pid != pid and restarted["started"] is True
    _wait(lambda: _gone(process), 60, "the killed job's JVM to go")
    replay_movielens(settings, project, movielens, limit=100)
    _wait(lambda: _processed_after(settings, project, t1), START_TIMEOUT_S, "batches after restart")

    # A stalled job (SIGSTOP) whose lag grows at every tick is restarted.
    stalled = running_process(settings, project)
    assert stalled is not None
    os.killpg(stalled.pid, signal.SIGSTOP)
    cursor = None
    requests: list[dg.RunRequest] = []
    for _ in range(4):
        replay_movielens(settings, project, movielens, limit=50)
        tick = _tick(sensor, settings, instance, cursor)
        cursor, requests = tick.cursor, list(tick.run_requests or [])
        if requests:
            break
    [restart] = requests
    config = restart.run_config["ops"][f"{project}_start_online_job"]["config"]
    assert config["restart"] is True and "lag grew 2 times in a row" in config["reason"]
    t2 = int(time.time() * 1000)
    third_pid, _ = _deploy(settings, project, instance, **config)
    assert third_pid != stalled.pid
    _wait(lambda: _gone(stalled), 90, "the stalled job to be stopped")
    _wait(lambda: _processed_after(settings, project, t2), START_TIMEOUT_S, "the caught-up job")

    # twotier stream-stop ends it; the watchdog then leaves it alone.
    current = read_process(settings, project)
    assert current is not None and current.alive()
    out = _twotier("stream-stop", "--project", project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"online job {project} stopped" in out.stdout + out.stderr
    assert _gone(current) and not pid_path(settings, project).exists()
    assert (read_status(settings, project) or {}).get("state") == "stopped"
    after = _tick(sensor, settings, instance, None)
    assert not after.run_requests and after.skip_message and "not deployed" in after.skip_message
    again_out = _twotier("stream-stop", "--project", project)
    assert again_out.returncode == 0 and "not running" in again_out.stdout + again_out.stderr


def test_deploying_an_undeclared_project_fails_and_starts_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    job = make_deploy_streaming_job("nosuchproject")
    result = job.execute_in_process(resources=make_resources(settings), raise_on_error=False)
    assert not result.success
    assert "unknown project 'nosuchproject'" in str(result.all_events)
    assert not pid_path(settings, "nosuchproject").exists()
