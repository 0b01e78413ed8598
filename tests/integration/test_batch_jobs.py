"""The batch modes on real Kafka, FerretDB, chdb and Spark: offline load, import, handoff."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pyspark.sql import SparkSession

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_jobs.import_job import ImportJobError, run_import
from twotier.feature_jobs.offline_job import OfflineJobError, run_offline
from twotier.feature_jobs.offsets import (
    OffsetsError,
    loaded_ranges,
    read_start_offsets,
    topic_offsets,
)
from twotier.feature_jobs.session import spark_session
from twotier.features.aggregate import aggregate
from twotier.generate import MemeFeed, MemeFeedConfig
from twotier.infra.service import Service
from twotier.naming import dead_letter_topic, events_topic, online_collection
from twotier.offline_store import open_offline_store
from twotier.online_store import connect
from twotier.replay import ensure_topic

PROJECT_FEATURES = "memes"
N_EVENTS = 1_200


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = spark_session(settings, "twotier-test-batch")
    yield session
    session.stop()


def _project_settings(settings: Settings) -> tuple[Settings, str]:
    """A fresh project with the memes feature groups (every test gets its own data)."""
    project = f"bj_{uuid.uuid4().hex[:8]}"
    projects = dict(settings.projects)
    projects[project] = settings.projects[PROJECT_FEATURES]
    return settings.model_copy(update={"projects": projects}), project


def _events(project: str, n: int, seed: int = 3) -> list[Event]:
    feed = MemeFeed(MemeFeedConfig(users=40, items=60, seed=seed))
    return list(feed.events(project, limit=n))


def _produce(settings: Settings, project: str, payloads: list[bytes], keys: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    for key, value in zip(keys, payloads, strict=True):
        producer.send(events_topic(project), key=key, value=value)
    producer.flush()
    producer.close()


def _produce_events(settings: Settings, project: str, events: list[Event]) -> None:
    _produce(
        settings,
        project,
        [e.to_json().encode() for e in events],
        [e.user_id.encode() for e in events],
    )


def _dead_letters(settings: Settings, project: str) -> list[dict[str, object]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None)
    topic = dead_letter_topic(project)
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        consumer.close()
        return []
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    out: list[dict[str, object]] = []
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for records in consumer.poll(timeout_ms=1000).values():
            out.extend(json.loads(r.value) for r in records)
    consumer.close()
    return out


def _snapshot_counts(settings: Settings, project: str) -> dict[str, int]:
    with open_offline_store(settings) as store:
        groups = settings.project_features(project).feature_groups
        keys = [g.key for g in groups if g.from_events(offline=True)]
        return {
            key: int(
                store.query_df(f"SELECT count() AS n FROM {store.table(project, key)}")["n"][0]
            )
            for key in keys
        }


def test_offline_loads_a_range_once_and_dead_letters_malformed(
    settings: Settings, kafka: Service, spark: SparkSession
) -> None:
    settings, project = _project_settings(settings)
    ensure_topic(settings, project, partitions=2)
    events = _events(project, N_EVENTS)
    _produce_events(settings, project, events)
    bad = [b"{not json", json.dumps({"event_id": "x", "project": project}).encode()]
    _produce(settings, project, bad, [b"k1", b"k2"])

    first = run_offline(settings, project, spark=spark, chunk_rows=500)
    assert first.records == N_EVENTS + 2
    assert first.events == first.inserted == N_EVENTS
    assert first.malformed == {"bad_json": 1, "missing_field": 1}
    assert set(first.snapshots) == {"user_stats_v1", "item_stats_v1", "user_item_v1"}
    snapshots = _snapshot_counts(settings, project)
    assert all(n > 0 for n in snapshots.values())
    letters = _dead_letters(settings, project)
    assert sorted(str(d["reason"]) for d in letters) == ["bad_json", "missing_field"]

    with open_offline_store(settings) as store:
        assert store.count_events(project) == N_EVENTS
        stored = store.query_df(
            f"SELECT action, count() AS n FROM {store.table(project, 'events')} FINAL "
            "GROUP BY action"
        )
    assert dict(zip(stored["action"], stored["n"], strict=True)) == Counter(
        e.action for e in events
    )

    # The same range again: nothing new, no new dead letters, snapshots untouched.
    again = run_offline(settings, project, spark=spark)
    assert again.records == N_EVENTS + 2
    assert again.inserted == 0
    assert again.snapshots == {}
    assert again.malformed == first.malformed
    assert len(_dead_letters(settings, project)) == 2
    assert _snapshot_counts(settings, project) == snapshots
    with open_offline_store(settings) as store:
        assert store.count_events(project) == N_EVENTS
        assert len(loaded_ranges(store, project, events_topic(project))) == 2


def test_offline_bad_input(settings: Settings, kafka: Service, spark: SparkSession) -> None:
    settings, project = _project_settings(settings)
    with pytest.raises(OffsetsError, match="does not exist"):
        run_offline(settings, project, spark=spark)
    ensure_topic(settings, project, partitions=1)
    _produce_events(settings, project, _events(project, 10))
    with pytest.raises(OfflineJobError, match="partition"):
        run_offline(settings, project, start_offsets={7: 0}, spark=spark)
    with pytest.raises(OfflineJobError, match="not within"):
        run_offline(settings, project, end_offsets={0: 99}, spark=spark)
    with pytest.raises(ImportJobError, match="offline"):
        run_import(settings, project)


def _exact(settings: Settings, project: str, events: list[Event]) -> dict[str, dict[str, dict]]:
    """Per online group key, the documents ``aggregate`` computes from all events at once."""
    out: dict[str, dict[str, dict]] = {}
    for group in settings.project_features(project).feature_groups:
        if not group.from_events(online=True):
            continue
        updates = aggregate(group, events)
        docs: dict[str, dict] = {}
        for eid in updates.entity_ids():
            docs[eid] = {**updates.increments.get(eid, {}), **updates.maxima.get(eid, {})}
        out[group.key] = docs
    return out


def _stored(settings: Settings, project: str, expected: dict[str, dict[str, dict]]) -> dict:
    with connect(settings) as store:
        return {
            key: store.get_many(online_collection(project, key), [*docs, "nobody"])
            for key, docs in expected.items()
        }


def test_import_then_online_counts_every_event_once(
    settings: Settings, kafka: Service, online_server: Service, spark: SparkSession
) -> None:
    from twotier.feature_jobs.online_job import run_online

    settings, project = _project_settings(settings)
    ensure_topic(settings, project, partitions=2)
    events = _events(project, N_EVENTS, seed=5)
    half = N_EVENTS // 2
    _produce_events(settings, project, events[:half])

    loaded = run_offline(settings, project, spark=spark)
    assert loaded.inserted == half
    result = run_import(settings, project)
    _, end = topic_offsets(settings, events_topic(project))
    assert result.offsets == end
    with connect(settings) as store:
        handoff = read_start_offsets(store, project)
    assert handoff is not None
    assert handoff.offsets == end
    assert sorted(handoff.groups) == ["item_stats_v1", "user_item_v1", "user_stats_v1"]
    expected_half = _exact(settings, project, events[:half])
    assert _stored(settings, project, expected_half) == expected_half

    # Importing again writes the same values: idempotent.
    run_import(settings, project)
    assert _stored(settings, project, expected_half) == expected_half

    _produce_events(settings, project, events[half:])
    run_online(settings, project, available_now=True, spark=spark)
    expected = _exact(settings, project, events)
    assert _stored(settings, project, expected) == expected
