"""The online feature job on real Kafka, FerretDB and Spark: exact counters, exactly once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaProducer
from pyspark.sql import SparkSession

from twotier.config import Settings
from twotier.feature_jobs.online_job import (
    COUNTER_FIELDS,
    USER_COUNTERS,
    online_checkpoint,
    run_online,
)
from twotier.feature_jobs.session import spark_session
from twotier.infra.service import Service
from twotier.naming import events_topic, online_collection
from twotier.online_store import connect
from twotier.replay import ensure_topic, replay_movielens

N_RATINGS = 2_000
MAX_OFFSETS = 1_500  # ~3,000 events → a few micro-batches


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = spark_session(settings, "twotier-test-online")
    yield session
    session.stop()


def _project() -> str:
    return f"ol_{uuid.uuid4().hex[:8]}"


def _expected_counters(movielens: Path, limit: int) -> dict[str, dict[str, float]]:
    """Counters computed straight from ratings.csv with pandas (first ``limit`` by time)."""
    ratings = pd.read_csv(movielens / "ratings.csv")
    first = ratings.sort_values(["timestamp", "userId", "movieId"], kind="stable").head(limit)
    grouped = first.groupby("userId")["rating"]
    table = pd.DataFrame(
        {
            "views": grouped.size(),
            "smiles": grouped.apply(lambda r: int((r >= 4.0).sum())),
            "dislikes": grouped.apply(lambda r: int((r <= 2.0).sum())),
            "rating_sum": grouped.sum(),
        }
    )
    return {
        str(user): {name: float(row[name]) for name in COUNTER_FIELDS}
        for user, row in table.iterrows()
    }


def _stored_counters(
    settings: Settings, project: str, ids: list[str]
) -> dict[str, dict[str, float]]:
    with connect(settings) as store:
        docs = store.get_many(online_collection(project, USER_COUNTERS), ids)
    return {
        user: {name: float(doc.get(name, 0)) for name in COUNTER_FIELDS}
        for user, doc in docs.items()
    }


def test_counters_are_exact_and_survive_reruns_and_a_lost_commit(
    settings: Settings, kafka: Service, ferretdb: Service, spark: SparkSession, movielens: Path
) -> None:
    project = _project()
    produced = replay_movielens(settings, project, movielens, limit=N_RATINGS)
    expected = _expected_counters(movielens, N_RATINGS)
    ids = sorted(expected)
    assert produced == sum(c["views"] + c["smiles"] + c["dislikes"] for c in expected.values())

    first = run_online(
        settings, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert first.input_rows == produced
    assert first.malformed_rows == 0
    assert first.batches >= 2
    assert first.skipped == 0
    assert _stored_counters(settings, project, [*ids, "no-such-user"]) == expected

    # No new data: nothing runs, nothing changes.
    second = run_online(
        settings, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert second.batches == 0
    assert _stored_counters(settings, project, ids) == expected

    # A crash after the write and before the checkpoint commit: Spark replays the last
    # batch with the same id, and the compare-and-set makes the replay a no-op.
    commits = online_checkpoint(settings, project) / "commits"
    last = max((p for p in commits.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    last.unlink()
    (commits / f".{last.name}.crc").unlink(missing_ok=True)
    third = run_online(
        settings, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert third.batch_ids == [int(last.name)]
    assert third.written == 0
    assert third.skipped == third.documents > 0
    assert _stored_counters(settings, project, ids) == expected


def test_malformed_events_are_counted_and_dropped(
    settings: Settings, kafka: Service, ferretdb: Service, spark: SparkSession
) -> None:
    project = _project()
    topic = ensure_topic(settings, project, partitions=1)
    assert topic == events_topic(project)

    def event(user: Any, action: str, value: Any = 1.0, **extra: Any) -> bytes:
        body = {
            "event_id": uuid.uuid4().hex,
            "project": project,
            "user_id": user,
            "item_id": "1",
            "action": action,
            "value": value,
            "ts": 1_000,
            "context": {},
        }
        body.update(extra)
        return json.dumps(body).encode()

    messages = [
        event("u1", "view", 4.5),
        event("u1", "smile"),
        event("u2", "view", 1.0),
        event("u2", "dislike"),
        b"not json at all",
        b'{"user_id": "u1"}',  # lacks action and ts
        event("u1", "view", "five"),  # value is not a number
        event("u1", "view", 3.0, project="someone_else"),  # another project's event
        event("", "view", 3.0),  # empty user id
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for message in messages:
        producer.send(topic, key=b"k", value=message)
    producer.flush()
    producer.close()

    stats = run_online(settings, project, available_now=True, spark=spark)
    assert stats.input_rows == len(messages)
    assert stats.malformed_rows == 5
    assert _stored_counters(settings, project, ["u1", "u2", ""]) == {
        "u1": {"views": 1.0, "smiles": 1.0, "dislikes": 0.0, "rating_sum": 4.5},
        "u2": {"views": 1.0, "smiles": 0.0, "dislikes": 1.0, "rating_sum": 1.0},
    }


def test_bad_max_offsets_is_rejected(settings: Settings) -> None:
    from twotier.feature_jobs.online_job import OnlineJobError

    with pytest.raises(OnlineJobError, match="max_offsets_per_trigger"):
        run_online(settings, "movielens", available_now=True, max_offsets_per_trigger=0)
