"""Exactly once, the hard way: the online job as a real process, SIGKILLed and restarted.

Events arrive while ``python -m twotier.feature_jobs online`` runs (1 s trigger). The
job is killed twice — once by the ``TWOTIER_FAULT_AFTER_WRITE`` hook right after a
batch's online write and before Spark commits it, once from outside at an arbitrary
moment — and restarted each time; a second test restarts the Kafka broker under it.
In the end every field of every online feature group must equal what pandas computes
from the raw events: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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
from twotier.feature_jobs.online_job import FAULT_AFTER_WRITE_ENV, online_checkpoint
from twotier.infra.service import Service


@pytest.fixture
def stream_setup(
    settings: Settings, movielens: Path, kafka: Service, online_server: Service
) -> Iterator[tuple[Settings, str, list[Event]]]:
    """A fresh project with its topic, the movies of the slice loaded, and its events."""
    yield from stream_project(settings, movielens)


def test_sigkill_twice_and_restart_counts_every_event_exactly_once(
    stream_setup: tuple[Settings, str, list[Event]], movielens: Path, tmp_path: Path
) -> None:
    settings, project, events = stream_setup
    checkpoint = online_checkpoint(settings, project)
    fault_batch = 2
    produce(settings, project, events[:900])
    producer = threading.Thread(
        target=produce, args=(settings, project, events[900:], 2.0), daemon=True
    )
    producer.start()

    # 1. Killed by the hook after the online write of batch 2, before its commit.
    first = OnlineJob(
        settings, project, tmp_path / "first.log", **{FAULT_AFTER_WRITE_ENV: str(fault_batch)}
    )
    try:
        assert first.proc.wait(timeout=300) == -signal.SIGKILL, first.text()[-4000:]
    finally:
        first.kill()
    assert f"SIGKILL after the online write of batch {fault_batch}" in first.text()
    assert (checkpoint / "offsets" / str(fault_batch)).exists()
    assert not (checkpoint / "commits" / str(fault_batch)).exists()

    # 2. Restarted: batch 2 is replayed and changes nothing; then killed at a random moment.
    second = OnlineJob(settings, project, tmp_path / "second.log")
    try:
        wait_for("batch 5", lambda: status(settings, project).get("batch_id", -1) >= 5, second, 300)
        time.sleep(random.uniform(0.0, 1.5))
    finally:
        second.kill()
    replay = re.search(
        rf"online batch {fault_batch} of {project}: (\d+) rows, 0 dead letters, "
        r"0 documents written, (\d+) already applied",
        second.text(),
    )
    assert replay and int(replay.group(1)) > 0 and int(replay.group(2)) > 0, second.text()[-4000:]

    # 3. Restarted again after every event is in Kafka; it catches up and stops cleanly.
    producer.join(timeout=120)
    assert not producer.is_alive()
    third = OnlineJob(settings, project, tmp_path / "third.log")
    try:
        wait_for("the end of the topic", caught_up(settings, project, len(events)), third, 300)
        assert third.stop() == 0, third.text()[-4000:]
    finally:
        third.kill()
    assert status(settings, project)["state"] == "stopped"
    assert_exact(settings, project, events, movielens)


def test_a_kafka_restart_mid_stream_loses_and_doubles_nothing(
    stream_setup: tuple[Settings, str, list[Event]],
    movielens: Path,
    kafka: Service,
    tmp_path: Path,
) -> None:
    settings, project, events = stream_setup
    half = len(events) // 2
    produce(settings, project, events[:half])
    job = OnlineJob(settings, project, tmp_path / "job.log")
    try:
        wait_for("batch 1", lambda: status(settings, project).get("batch_id", -1) >= 1, job, 300)
        kafka.stop()
        try:
            time.sleep(5)
        finally:
            kafka.start(print)
        produce(settings, project, events[half:], pause_s=0.5)
        wait_for("the end of the topic", caught_up(settings, project, len(events)), job, 300)
        assert job.proc.poll() is None, "the job died with the broker"
        assert job.stop() == 0, job.text()[-4000:]
    finally:
        job.kill()
    assert_exact(settings, project, events, movielens)
