"""The online feature job on real Kafka, FerretDB and Spark: every online group, exactly once."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer
from pyspark.sql import SparkSession
from streaming_harness import decayed_fields, same_documents

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_jobs.backoff import Backoff
from twotier.feature_jobs.online_job import (
    OnlineJobError,
    OnlineRunStats,
    online_checkpoint,
    run_online,
)
from twotier.feature_jobs.session import spark_session
from twotier.feature_jobs.status import read_status
from twotier.features.aggregate import aggregate
from twotier.features.builtin import MEMES, builtin_projects
from twotier.features.spec import ProjectFeatures
from twotier.infra.service import Service
from twotier.items import Item, load_items
from twotier.naming import dead_letter_topic, events_topic, online_collection
from twotier.online_store import connect
from twotier.replay import ensure_topic, replay_movielens

N_RATINGS = 2_000
MAX_OFFSETS = 1_500  # ~3,200 events → a few micro-batches
STATS = ("views", "smiles", "dislikes", "rating_sum", "last_view_ts")


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = spark_session(settings, "twotier-test-online")
    yield session
    session.stop()


def _declare(settings: Settings, prefix: str, features: ProjectFeatures) -> tuple[Settings, str]:
    """Settings that declare a fresh project with ``features``, and its name."""
    project = f"{prefix}_{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={"projects": {**settings.projects, project: features}}
    ), project


def _expected_stats(movielens: Path, limit: int, entity: str) -> dict[str, dict[str, float]]:
    """``user_stats`` / ``item_stats`` straight from ratings.csv with pandas."""
    ratings = pd.read_csv(movielens / "ratings.csv")
    first = ratings.sort_values(["timestamp", "userId", "movieId"], kind="stable").head(limit)
    grouped = first.groupby("userId" if entity == "user" else "movieId")
    table = pd.DataFrame(
        {
            "views": grouped.size(),
            "smiles": grouped["rating"].apply(lambda r: int((r >= 4.0).sum())),
            "dislikes": grouped["rating"].apply(lambda r: int((r <= 2.0).sum())),
            "rating_sum": grouped["rating"].sum(),
            "last_view_ts": grouped["timestamp"].max() * 1000,
        }
    )
    out = {
        str(key): {name: float(row[name]) for name in STATS if row[name]}
        for key, row in table.iterrows()
    }
    if entity == "item":  # recent popularity: views decayed by half every 30 / 365 days
        views = first.rename(columns={"movieId": "item_id"}).assign(
            action="view", ts=lambda f: f["timestamp"] * 1000
        )
        group = builtin_projects()["movielens"].group("item_stats")
        for field, values in decayed_fields(group, views, "item_id").items():
            for item, value in values.items():
                out[item][field] = value
    return out


def _stored(settings: Settings, project: str, group_key: str, ids: list[str]) -> dict[str, Any]:
    with connect(settings) as store:
        docs = store.get_many(online_collection(project, group_key), ids)
    return {i: {k: float(v) for k, v in doc.items()} for i, doc in docs.items()}


def _count_documents(settings: Settings, project: str, group_key: str) -> int:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
    try:
        collection = client[settings.online_store.database][online_collection(project, group_key)]
        return int(collection.count_documents({}))
    finally:
        client.close()


def _send(settings: Settings, topic: str, messages: list[bytes], key: bytes = b"k") -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for message in messages:
        producer.send(topic, key=key, value=message)
    producer.flush()
    producer.close()


def test_every_online_group_is_exact_and_survives_reruns_and_a_lost_commit(
    settings: Settings, kafka: Service, online_server: Service, spark: SparkSession, movielens: Path
) -> None:
    local, project = _declare(settings, "ol", builtin_projects()["movielens"])
    produced = replay_movielens(local, project, movielens, limit=N_RATINGS)
    users = _expected_stats(movielens, N_RATINGS, "user")
    items = _expected_stats(movielens, N_RATINGS, "item")
    assert produced == sum(
        c["views"] + c.get("smiles", 0) + c.get("dislikes", 0) for c in users.values()
    )

    def check() -> None:
        assert _stored(local, project, "user_stats_v1", [*users, "no-such-user"]) == users
        assert same_documents(_stored(local, project, "item_stats_v1", list(items)), items)
        assert _count_documents(local, project, "user_stats_v1") == len(users)
        assert _count_documents(local, project, "item_stats_v1") == len(items)

    first = run_online(
        local, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert first.input_rows == produced
    assert first.malformed_rows == 0
    assert first.batches >= 2
    assert first.skipped == 0
    check()
    status = read_status(local, project)
    assert status is not None
    assert status["state"] == "stopped" and status["batch_id"] == first.batch_ids[-1]
    assert status["lag"] == 0 and sum(status["processed_offsets"].values()) == produced
    assert set(status["groups"]) == {"user_stats_v1", "item_stats_v1", "user_item_v1"}
    assert status["duration_s"] >= status["write_s"] > 0

    # No new data: nothing runs, nothing changes.
    second = run_online(
        local, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert second.batches == 0
    check()

    # A crash after the write and before the checkpoint commit: Spark replays the last
    # batch with the same id, and the compare-and-set makes the replay a no-op.
    commits = online_checkpoint(local, project) / "commits"
    last = max((p for p in commits.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    last.unlink()
    (commits / f".{last.name}.crc").unlink(missing_ok=True)
    third = run_online(
        local, project, available_now=True, max_offsets_per_trigger=MAX_OFFSETS, spark=spark
    )
    assert third.batch_ids == [int(last.name)]
    assert third.written == 0
    assert third.skipped == third.documents > 0
    check()


GENRE_GROUP = {
    "name": "user_genres",
    "entity": "user",
    "features": [
        {
            "name": "views_by_genre",
            "kind": "counter",
            "action": "view",
            "by": "genre",
            "values": ["Drama", "Comedy", "Horror"],
        },
    ],
}


def test_spark_equals_aggregate_with_items_joined_by_batched_lookups(
    settings: Settings, kafka: Service, online_server: Service, spark: SparkSession
) -> None:
    features = ProjectFeatures.model_validate(
        {"feature_groups": [*MEMES["feature_groups"], GENRE_GROUP]}
    )
    local, project = _declare(settings, "en", features)
    rng = random.Random(7)
    types = ["image", "video", "gif"]
    genres = ["Drama", "Comedy", "Horror", "War"]
    catalogue = {
        f"m{i}": {
            "content_type": rng.choice(types),
            "genres": rng.sample(genres, rng.randint(0, 3)),
        }
        for i in range(30)
    }
    # m29 is not loaded: its events count nowhere a content type or genre is needed.
    load_items(
        local, project, [Item(item_id=i, attributes=a) for i, a in catalogue.items() if i != "m29"]
    )
    events = []
    for n in range(400):
        item = f"m{rng.randrange(30)}"
        context = {"content_type": rng.choice(types)} if rng.random() < 0.4 else {}
        events.append(
            Event(
                event_id=f"e{n}",
                project=project,
                user_id=f"u{rng.randrange(15)}",
                item_id=item,
                action=rng.choice(["view", "view", "smile", "dislike", "comment", "share"]),
                value=rng.choice([1.0, 2.5]),
                ts=1_000 + rng.randrange(100_000),
                context=context,
            )
        )
    topic = ensure_topic(local, project, partitions=2)
    _send(local, topic, [e.to_json().encode() for e in events[:200]], key=b"a")
    _send(local, topic, [e.to_json().encode() for e in events[200:]], key=b"b")

    stats = run_online(local, project, available_now=True, spark=spark)
    assert stats.input_rows == len(events) and stats.malformed_rows == 0
    status = read_status(local, project)
    assert status is not None and status["items_looked_up"] > 0

    # The same events with the item's content type where the producer sent none.
    known = {i: a for i, a in catalogue.items() if i != "m29"}
    joined = [
        e.model_copy(update={"context": {"content_type": known[e.item_id]["content_type"]}})
        if not e.context and e.item_id in known
        else e
        for e in events
    ]
    for group in features.feature_groups[:3]:
        expected = aggregate(group, joined)
        ids = expected.entity_ids()
        stored = _stored(local, project, group.key, ids)
        assert stored == {
            i: {**expected.increments.get(i, {}), **expected.maxima.get(i, {})} for i in ids
        }, group.name
        assert _count_documents(local, project, group.key) == len(ids)

    # Genres: a list attribute counts once per listed (declared) genre, via pandas.
    frame = pd.DataFrame([e.model_dump() for e in events])
    views = frame[(frame["action"] == "view") & frame["item_id"].isin(list(known))].copy()
    views["genre"] = views["item_id"].map(lambda i: known[i]["genres"])
    exploded = views.explode("genre")
    exploded = exploded[exploded["genre"].isin(["Drama", "Comedy", "Horror"])]
    counts = exploded.groupby(["user_id", "genre"]).size()
    expected_genres: dict[str, dict[str, float]] = {}
    for (user, genre), n in counts.items():
        expected_genres.setdefault(str(user), {})[f"views_by_genre__{genre}"] = float(n)
    assert (
        _stored(local, project, "user_genres_v1", [f"u{i}" for i in range(15)]) == expected_genres
    )


def test_malformed_events_are_dead_lettered_with_a_reason_and_counted(
    settings: Settings, kafka: Service, online_server: Service, spark: SparkSession
) -> None:
    local, project = _declare(settings, "dl", builtin_projects()["movielens"])
    topic = ensure_topic(local, project, partitions=1)
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
        b"not json at all",  # offset 4
        b'{"user_id": "u1"}',  # lacks event_id, action, ts, ...
        event("u1", "view", "five"),  # value is not a number
        event("u1", "view", 3.0, project="someone_else"),  # another project's event
        event("", "view", 3.0),  # empty user id
    ]
    _send(local, topic, messages)

    stats = run_online(local, project, available_now=True, spark=spark)
    assert stats.input_rows == len(messages)
    assert stats.malformed_rows == 5
    assert stats.dead_letters == {
        "bad_json": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "unknown_project": 1,
        "invalid_value": 1,
    }
    assert _stored(local, project, "user_stats_v1", ["u1", "u2", ""]) == {
        "u1": {"views": 1.0, "smiles": 1.0, "rating_sum": 4.5, "last_view_ts": 1000.0},
        "u2": {"views": 1.0, "dislikes": 1.0, "rating_sum": 1.0, "last_view_ts": 1000.0},
    }
    status = read_status(local, project)
    assert status is not None and status["dead_letters"] == 5

    consumer = KafkaConsumer(
        dead_letter_topic(project),
        bootstrap_servers=local.kafka.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
    )
    letters = [json.loads(r.value) for r in consumer]
    consumer.close()
    by_offset = {d["offset"]: d for d in letters}
    assert sorted(by_offset) == [4, 5, 6, 7, 8]
    assert by_offset[4]["reason"] == "bad_json" and by_offset[4]["raw"] == "not json at all"
    assert by_offset[7]["reason"] == "unknown_project" and "someone_else" in by_offset[7]["detail"]
    assert all(d["topic"] == topic and d["partition"] == 0 for d in letters)


def test_a_missing_topic_is_waited_for_then_the_job_proceeds(
    settings: Settings, kafka: Service, online_server: Service, spark: SparkSession
) -> None:
    local, project = _declare(settings, "mt", builtin_projects()["movielens"])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["stats"] = run_online(
                local,
                project,
                available_now=True,
                spark=spark,
                retry=Backoff(initial_s=0.5, max_s=2.0, max_attempts=60),
            )
        except Exception as exc:  # surfaced by the asserts below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = read_status(local, project)
        if status and status.get("state") == "retrying":
            break
        time.sleep(0.5)
    assert status is not None and status["state"] == "retrying", status
    assert f"kafka topic {events_topic(project)} does not exist" in status["error"]
    assert thread.is_alive()

    topic = ensure_topic(local, project, partitions=1)
    event = Event(
        event_id="a", project=project, user_id="7", item_id="1", action="view", value=3.0, ts=5
    )
    _send(local, topic, [event.to_json().encode()])
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in outcome, outcome
    stats: OnlineRunStats = outcome["stats"]
    assert stats.retries >= 1 and stats.input_rows == 1
    assert _stored(local, project, "user_stats_v1", ["7"]) == {
        "7": {"views": 1.0, "rating_sum": 3.0, "last_view_ts": 5.0}
    }
    final = read_status(local, project)
    assert final is not None and final["state"] == "stopped" and final["error"] is None


def test_an_unreachable_store_is_retried_with_backoff_then_reported(
    settings: Settings, kafka: Service, spark: SparkSession, tmp_path: Path
) -> None:
    dead_port = settings.kafka.port + 297  # inside this stack's port block, never bound
    local, project = _declare(settings, "st", builtin_projects()["movielens"])
    local = local.model_copy(
        update={
            "online_store": local.online_store.model_copy(
                update={"uri": f"mongodb://127.0.0.1:{dead_port}/", "server": "secantusdb"}
            ),
            "data_dir": tmp_path,
        }
    )
    ensure_topic(local, project, partitions=1)
    started = time.monotonic()
    with pytest.raises(OnlineJobError, match=r"gave up after 2 failures in a row: online store"):
        run_online(
            local,
            project,
            available_now=True,
            spark=spark,
            retry=Backoff(initial_s=1.0, max_s=1.0, max_attempts=2),
        )
    assert time.monotonic() - started >= 1.0  # it waited between the attempts
    status = read_status(local, project)
    assert status is not None and status["state"] == "failed"
    assert "online store" in status["error"] and status["failures_in_a_row"] == 2


def test_bad_arguments_and_undeclared_projects_are_rejected(settings: Settings) -> None:
    with pytest.raises(OnlineJobError, match="max_offsets_per_trigger"):
        run_online(settings, "movielens", available_now=True, max_offsets_per_trigger=0)
    with pytest.raises(OnlineJobError, match="unknown project 'nowhere'"):
        run_online(settings, "nowhere", available_now=True)
    offline_only = ProjectFeatures.model_validate(
        {"feature_groups": [{**GENRE_GROUP, "online": False}]}
    )
    local, project = _declare(settings, "off", offline_only)
    with pytest.raises(OnlineJobError, match="no online feature group"):
        run_online(local, project, available_now=True)
