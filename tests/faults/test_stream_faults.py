"""kill -9 under the streaming job: the broker, the online store, the job itself.

Each test produces events while ``python -m twotier.feature_jobs online`` runs, kills
one component with SIGKILL, restarts it, and then requires every online counter to
equal pandas' count of the raw events. What the fault cost (seconds down, seconds until
the job had caught up again, whether the job survived) goes to ``fault_report``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from online_servers import sigkill_service
from streaming_harness import (
    OnlineJob,
    assert_exact,
    caught_up,
    produce,
    status,
    stream_project,
    wait_for,
)

from twotier.config import Settings
from twotier.events import Event
from twotier.infra.service import Service

DOWN_S = 5.0
"""How long a killed service stays down before it is started again."""


@pytest.fixture
def stream_setup(
    settings: Settings, movielens: Path, kafka: Service, online_server: Service
) -> Iterator[tuple[Settings, str, list[Event]]]:
    yield from stream_project(settings, movielens, prefix="fault")


def _kill_service_mid_stream(
    service: Service,
    setup: tuple[Settings, str, list[Event]],
    movielens: Path,
    tmp_path: Path,
) -> dict[str, Any]:
    """Stream, SIGKILL ``service``, restart it, finish the stream; returns the cost."""
    settings, project, events = setup
    half = len(events) // 2
    produce(settings, project, events[:half])
    job = OnlineJob(settings, project, tmp_path / "job.log")
    try:
        wait_for("batch 1", lambda: status(settings, project).get("batch_id", -1) >= 1, job, 300)
        batch_at_kill = status(settings, project).get("batch_id", -1)
        killed_at = time.monotonic()
        sigkill_service(service)
        time.sleep(DOWN_S)
        service.start(print)
        restarted_at = time.monotonic()
        produce(settings, project, events[half:], pause_s=0.5)
        wait_for("the end of the topic", caught_up(settings, project, len(events)), job, 300)
        caught_up_at = time.monotonic()
        survived = job.proc.poll() is None
        assert survived, "the online job died with " + service.name
        assert job.stop() == 0, job.text()[-4000:]
    finally:
        job.kill()
    assert_exact(settings, project, events, movielens)
    return {
        "component": service.name,
        "events": len(events),
        "batch_at_kill": batch_at_kill,
        "seconds_down": round(restarted_at - killed_at, 2),
        "seconds_restart_to_caught_up": round(caught_up_at - restarted_at, 2),
        "job_survived": survived,
        "counters_exact": True,
        "lost_or_doubled": 0,
    }


def test_sigkill_of_the_online_store_loses_and_doubles_nothing(
    stream_setup: tuple[Settings, str, list[Event]],
    online_server: Service,
    movielens: Path,
    tmp_path: Path,
    fault_report: dict[str, dict[str, Any]],
) -> None:
    cost = _kill_service_mid_stream(online_server, stream_setup, movielens, tmp_path)
    fault_report["online_store_sigkill"] = cost


def test_sigkill_of_the_kafka_broker_loses_and_doubles_nothing(
    stream_setup: tuple[Settings, str, list[Event]],
    kafka: Service,
    movielens: Path,
    tmp_path: Path,
    fault_report: dict[str, dict[str, Any]],
) -> None:
    cost = _kill_service_mid_stream(kafka, stream_setup, movielens, tmp_path)
    fault_report["kafka_broker_sigkill"] = cost


def test_sigkill_of_the_spark_job_then_restart_counts_exactly_once(
    stream_setup: tuple[Settings, str, list[Event]],
    movielens: Path,
    tmp_path: Path,
    fault_report: dict[str, dict[str, Any]],
) -> None:
    settings, project, events = stream_setup
    half = len(events) // 2
    produce(settings, project, events[:half])
    first = OnlineJob(settings, project, tmp_path / "first.log")
    try:
        wait_for("batch 2", lambda: status(settings, project).get("batch_id", -1) >= 2, first, 300)
        batch_at_kill = status(settings, project).get("batch_id", -1)
    finally:
        killed_at = time.monotonic()
        first.kill()
    produce(settings, project, events[half:])
    restarted_at = time.monotonic()
    second = OnlineJob(settings, project, tmp_path / "second.log")
    try:
        wait_for("the end of the topic", caught_up(settings, project, len(events)), second, 300)
        caught_up_at = time.monotonic()
        assert second.stop() == 0, second.text()[-4000:]
    finally:
        second.kill()
    assert_exact(settings, project, events, movielens)
    fault_report["spark_job_sigkill"] = {
        "component": "online job (Spark driver and JVM)",
        "events": len(events),
        "batch_at_kill": batch_at_kill,
        "seconds_down": round(restarted_at - killed_at, 2),
        "seconds_restart_to_caught_up": round(caught_up_at - restarted_at, 2),
        "job_survived": False,
        "counters_exact": True,
        "lost_or_doubled": 0,
    }
