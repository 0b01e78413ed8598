"""The online job as a real process, events produced while it runs, and exact expectations.

Shared by the exactly-once integration tests and the fault tests: ``OnlineJob`` runs
``python -m twotier.feature_jobs online`` in its own process group; ``produce`` sends
events in chunks; ``assert_exact`` compares every online field with pandas' count of the
raw events.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_jobs.status import read_status, status_path
from twotier.features.builtin import GENRES, MOVIELENS
from twotier.features.spec import CounterFeature, FeatureGroup, ProjectFeatures, value_field
from twotier.items import load_items, movielens_items
from twotier.kafka_clients import make_producer
from twotier.naming import online_collection
from twotier.online_store import connect
from twotier.replay import ensure_topic, movielens_events

N_RATINGS = 1_500  # ~2,400 events
# MovieLens's own groups: counters, decayed counters, user x item, per-genre counters
# (resolved from each movie's genres when written) and the static item attributes.
FEATURES = ProjectFeatures.model_validate({"feature_groups": MOVIELENS["feature_groups"]})
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


def wait_for(what: str, check: Callable[[], bool], job: OnlineJob, timeout: float) -> None:
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


def status(settings: Settings, project: str) -> dict[str, Any]:
    return read_status(settings, project) or {}


def caught_up(settings: Settings, project: str, total: int) -> Callable[[], bool]:
    def check() -> bool:
        now = status(settings, project)
        processed = sum((now.get("processed_offsets") or {}).values())
        return processed == total and now.get("lag") == 0

    return check


def stream_project(
    settings: Settings, movielens: Path, prefix: str = "eo"
) -> Iterator[tuple[Settings, str, list[Event]]]:
    """A fresh project with its topic, the movies of the slice loaded, and its events.

    Use it as the body of a fixture (``yield from stream_project(...)``); it needs the
    ``kafka`` and ``online_server`` services running.
    """
    project = f"{prefix}_{uuid.uuid4().hex[:8]}"
    local = settings.model_copy(update={"projects": {**settings.projects, project: FEATURES}})
    events = list(movielens_events(project, movielens, limit=N_RATINGS))
    wanted = {e.item_id for e in events}
    load_items(local, project, [m for m in movielens_items(movielens) if m.item_id in wanted])
    ensure_topic(local, project, partitions=2)
    yield local, project, events
    status_path(local, project).unlink(missing_ok=True)


def produce(settings: Settings, project: str, events: list[Event], pause_s: float = 0.0) -> None:
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


def expected_fields(events: list[Event], movielens: Path) -> dict[str, dict[str, dict[str, float]]]:
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
        for field, values in decayed_fields(FEATURES.group(key[:-3]), frame, column).items():
            for entity, value in values.items():
                expected[key][entity][field] = value
    pairs = frame[frame["action"] == "view"].groupby(["user_id", "item_id"]).size()
    expected["user_item_v1"] = {f"{u}|{i}": {"views": float(n)} for (u, i), n in pairs.items()}
    movies = pd.read_csv(movielens / "movies.csv", dtype={"movieId": str})
    genres = dict(zip(movies["movieId"], movies["genres"].str.split("|"), strict=True))
    by_genre: dict[str, dict[str, float]] = {}
    for action, name in (("view", "views_by_genre"), ("smile", "smiles_by_genre")):
        fed = frame[frame["action"] == action].assign(genre=lambda f: f["item_id"].map(genres))
        exploded = fed.explode("genre")
        counts = exploded[exploded["genre"].isin(GENRES)].groupby(["user_id", "genre"]).size()
        for (user, genre), n in counts.items():
            by_genre.setdefault(str(user), {})[value_field(name, genre)] = float(n)
    expected["user_genres_v1"] = by_genre
    return expected


def decayed_fields(
    group: FeatureGroup, frame: pd.DataFrame, column: str
) -> dict[str, dict[str, float]]:
    """Per decayed counter of ``group``, per entity, the stored sum of event weights."""
    out: dict[str, dict[str, float]] = {}
    for f in group.raw_features():
        if isinstance(f, CounterFeature) and f.half_life_days is not None:
            fed = frame[frame["action"] == f.action]
            weights = fed["ts"].map(f.decay_weight) * (1 if f.agg == "count" else fed["value"])
            sums = weights.groupby(fed[column]).sum()
            out[f.name] = {str(e): float(v) for e, v in sums.items()}
    return out


def same_documents(got: dict[str, dict[str, float]], want: dict[str, dict[str, float]]) -> bool:
    """Equal documents: counters exactly, decayed counters (float sums) to 1e-9 relative."""
    if got.keys() != want.keys():
        return False
    for entity, doc in want.items():
        if got[entity].keys() != doc.keys():
            return False
        for field, value in doc.items():
            if "decayed" in field:
                if abs(got[entity][field] - value) > 1e-9 * max(abs(value), 1e-300):
                    return False
            elif got[entity][field] != value:
                return False
    return True


def assert_exact(settings: Settings, project: str, events: list[Event], movielens: Path) -> None:
    from pymongo import MongoClient

    expected = expected_fields(events, movielens)
    client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
    try:
        with connect(settings) as store:
            for key, docs in expected.items():
                collection = online_collection(project, key)
                stored = store.get_many(collection, list(docs))
                got = {i: {k: float(v) for k, v in d.items()} for i, d in stored.items()}
                assert same_documents(got, docs), f"{key}: lost or double-counted fields"
                count = client[settings.online_store.database][collection].count_documents({})
                assert count == len(docs), f"{key}: {count} documents, expected {len(docs)}"
    finally:
        client.close()
