"""Exactly once, the hard way: the online job as a real process, SIGKILLed and restarted.

Events arrive while ``python -m twotier.feature_jobs online`` runs (1 s trigger). The
job is killed twice — once by the ``TWOTIER_FAULT_AFTER_WRITE`` hook right after a
batch's online write and before Spark commits it, once from outside at an arbitrary
moment — and restarted each time; a second test restarts the Kafka broker under it.
In the end every field of every online feature group must equal what pandas computes
from the raw events: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_jobs.online_job import FAULT_AFTER_WRITE_ENV, online_checkpoint
from twotier.feature_jobs.status import read_status, status_path
from twotier.features.builtin import MOVIELENS
from twotier.features.spec import ProjectFeatures
from twotier.infra.service import Service
from twotier.items import load_items, movielens_items
from twotier.kafka_clients import make_producer
from twotier.naming import online_collection
from twotier.online_store import connect
from twotier.replay import ensure_topic, movielens_events

N_RATINGS = 1_500  # ~2,400 events
GENRES = ("Drama", "Comedy", "Action", "Thriller")
FEATURES = ProjectFeatures.model_validate(
    {
        "feature_groups": [
            *MOVIELENS["feature_groups"],
            {
                "name": "user_genres",
                "entity": "user",
                "features": [
                    {
                        "name": "views_by_genre",
                        "kind": "counter",
                        "action": "view",
                        "by": "genre",
                        "values": list(GENRES),
                    }
                ],
            },
        ]
    }
)
JOB_ARGS = ["--trigger-seconds", "1", "--max-offsets-per-trigger", "300", "--retry-max-s", "4"]


class OnlineJob:
    """``python -m twotier.feature_jobs online`` in its own process group, logging to a file."""

    def __init__(self, settings: Settings, project: str, log: Path, **env: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twotier.feature_jobs",
                "online",
                "--project",
                project,
                *JOB_ARGS,
            ],
            env={**os.environ, **settings.to_env(), **env},
            stdout=open(log, "wb"),  # noqa: SIM115 - owned by the child
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group (Python driver and Spark JVM), like a machine crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reap_group()

    def stop(self) -> int:
        """Ask for a clean stop (SIGTERM); returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self._reap_group()
        return code

    def _reap_group(self) -> None:
        """Wait until no process of the group is left (the JVM exits on its own or is killed)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        raise AssertionError(f"process group {self.proc.pid} still alive")


def _wait_for(what: str, check: Callable[[], bool], job: OnlineJob, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if job.proc.poll() is not None:
            raise AssertionError(
                f"job exited ({job.proc.returncode}) before {what}:\n{job.text()[-4000:]}"
            )
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{job.text()[-4000:]}")


def _status(settings: Settings, project: str) -> dict[str, Any]:
    return read_status(settings, project) or {}


def _caught_up(settings: Settings, project: str, total: int) -> Callable[[], bool]:
    def check() -> bool:
        status = _status(settings, project)
        processed = sum((status.get("processed_offsets") or {}).values())
        return processed == total and status.get("lag") == 0

    return check


@pytest.fixture
def stream_setup(
    settings: Settings, movielens: Path, kafka: Service, ferretdb: Service
) -> Iterator[tuple[Settings, str, list[Event]]]:
    """A fresh project with its topic, the movies of the slice loaded, and its events."""
    project = f"eo_{uuid.uuid4().hex[:8]}"
    local = settings.model_copy(update={"projects": {**settings.projects, project: FEATURES}})
    events = list(movielens_events(project, movielens, limit=N_RATINGS))
    wanted = {e.item_id for e in events}
    load_items(local, project, [m for m in movielens_items(movielens) if m.item_id in wanted])
    ensure_topic(local, project, partitions=2)
    yield local, project, events
    status_path(local, project).unlink(missing_ok=True)


def _produce(settings: Settings, project: str, events: list[Event], pause_s: float = 0.0) -> None:
    """Send ``events`` in chunks of 100, pausing between chunks (they arrive while the job runs)."""
    from twotier.naming import events_topic

    producer = make_producer(settings, "twotier-test-exactly-once")
    try:
        for start in range(0, len(events), 100):
            for event in events[start : start + 100]:
                producer.send(
                    events_topic(project),
                    key=event.user_id.encode(),
                    value=event.to_json().encode(),
                )
            producer.flush()
            time.sleep(pause_s)
    finally:
        producer.close()


def _expected(events: list[Event], movielens: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per group key, per entity, every stored field, computed with pandas from the raw events."""
    frame = pd.DataFrame([e.model_dump() for e in events])
    expected: dict[str, dict[str, dict[str, float]]] = {}
    for key, column in (("user_stats_v1", "user_id"), ("item_stats_v1", "item_id")):
        views = frame[frame["action"] == "view"].groupby(column)
        table = pd.DataFrame(
            {
                "views": views.size(),
                "rating_sum": views["value"].sum(),
                "last_view_ts": views["ts"].max(),
                "smiles": frame[frame["action"] == "smile"].groupby(column).size(),
                "dislikes": frame[frame["action"] == "dislike"].groupby(column).size(),
            }
        )
        expected[key] = {
            str(entity): {k: float(v) for k, v in row.items() if pd.notna(v)}
            for entity, row in table.iterrows()
        }
    movies = pd.read_csv(movielens / "movies.csv", dtype={"movieId": str})
    genres = dict(zip(movies["movieId"], movies["genres"].str.split("|"), strict=True))
    views = frame[frame["action"] == "view"].assign(genre=lambda f: f["item_id"].map(genres))
    exploded = views.explode("genre")
    counts = exploded[exploded["genre"].isin(GENRES)].groupby(["user_id", "genre"]).size()
    by_genre: dict[str, dict[str, float]] = {}
    for (user, genre), n in counts.items():
        by_genre.setdefault(str(user), {})[f"views_by_genre__{genre}"] = float(n)
    expected["user_genres_v1"] = by_genre
    return expected


def _assert_exact(settings: Settings, project: str, events: list[Event], movielens: Path) -> None:
    from pymongo import MongoClient

    expected = _expected(events, movielens)
    client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
    try:
        with connect(settings) as store:
            for key, docs in expected.items():
                collection = online_collection(project, key)
                stored = store.get_many(collection, list(docs))
                got = {i: {k: float(v) for k, v in d.items()} for i, d in stored.items()}
                assert got == docs, f"{key}: lost or double-counted fields"
                count = client[settings.online_store.database][collection].count_documents({})
                assert count == len(docs), f"{key}: {count} documents, expected {len(docs)}"
    finally:
        client.close()


def test_sigkill_twice_and_restart_counts_every_event_exactly_once(
    stream_setup: tuple[Settings, str, list[Event]], movielens: Path, tmp_path: Path
) -> None:
    settings, project, events = stream_setup
    checkpoint = online_checkpoint(settings, project)
    fault_batch = 2
    _produce(settings, project, events[:900])
    producer = threading.Thread(
        target=_produce, args=(settings, project, events[900:], 2.0), daemon=True
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
        _wait_for(
            "batch 5", lambda: _status(settings, project).get("batch_id", -1) >= 5, second, 300
        )
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
        _wait_for("the end of the topic", _caught_up(settings, project, len(events)), third, 300)
        assert third.stop() == 0, third.text()[-4000:]
    finally:
        third.kill()
    assert _status(settings, project)["state"] == "stopped"
    _assert_exact(settings, project, events, movielens)


def test_a_kafka_restart_mid_stream_loses_and_doubles_nothing(
    stream_setup: tuple[Settings, str, list[Event]],
    movielens: Path,
    kafka: Service,
    tmp_path: Path,
) -> None:
    settings, project, events = stream_setup
    half = len(events) // 2
    _produce(settings, project, events[:half])
    job = OnlineJob(settings, project, tmp_path / "job.log")
    try:
        _wait_for("batch 1", lambda: _status(settings, project).get("batch_id", -1) >= 1, job, 300)
        kafka.stop()
        try:
            time.sleep(5)
        finally:
            kafka.start(print)
        _produce(settings, project, events[half:], pause_s=0.5)
        _wait_for("the end of the topic", _caught_up(settings, project, len(events)), job, 300)
        assert job.proc.poll() is None, "the job died with the broker"
        assert job.stop() == 0, job.text()[-4000:]
    finally:
        job.kill()
    _assert_exact(settings, project, events, movielens)
