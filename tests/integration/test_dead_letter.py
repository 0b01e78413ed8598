"""Malformed events never stop a consumer: real Kafka, good and bad records mixed."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from twotier.config import Settings
from twotier.dead_letter import DeadLetters, consume_events
from twotier.events import Event
from twotier.infra.service import Service
from twotier.naming import dead_letter_topic, events_topic
from twotier.replay import ensure_topic, read_events


def good(project: str, n: int) -> Event:
    return Event(
        event_id=f"e{n}",
        project=project,
        user_id=f"u{n % 3}",
        item_id=f"i{n}",
        action="view",
        ts=1_700_000_000_000 + n,
    )


def bad_records(project: str) -> list[tuple[bytes, str]]:
    """One malformed record of each kind, with the reason it must be dead-lettered for."""
    base = good(project, 0).model_dump()

    def doc(**changes: Any) -> bytes:
        data = {**base, **changes}
        return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()

    return [
        (b"{this is not json", "bad_json"),
        (b"\xff\xfe\xfa", "not_utf8"),
        (b"[1, 2, 3]", "not_object"),
        (doc(user_id=...), "missing_field"),
        (doc(ts="yesterday"), "wrong_type"),
        (doc(ts=-1), "invalid_value"),
        (doc(project="someone_else"), "unknown_project"),
    ]


def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for value in values:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


def read_all(settings: Settings, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list[Any] = []
    deadline = time.monotonic() + 30
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def test_bad_records_go_to_the_dead_letter_topic_and_consumption_goes_on(kafka: Service) -> None:
    settings = kafka.settings
    project = f"dlq_{uuid.uuid4().hex[:8]}"
    topic = ensure_topic(settings, project, partitions=1)
    bad = bad_records(project)
    values: list[bytes] = []
    expected_reasons: list[tuple[int, str]] = []
    goods: list[Event] = []
    for n in range(30):  # a bad record after every fourth good one, each kind once
        event = good(project, n)
        goods.append(event)
        values.append(event.to_json().encode())
        if n % 4 == 3 and bad:
            raw, reason = bad.pop(0)
            expected_reasons.append((len(values), reason))
            values.append(raw)
    assert not bad
    produce(settings, topic, values)

    with DeadLetters(settings, project) as dead:
        events = list(consume_events(settings, project, dead_letters=dead, timeout_s=60))
    assert events == goods
    reasons = [reason for _, reason in expected_reasons]
    assert dead.counts() == {reason: 1 for reason in reasons}
    assert dead.total == 7

    letters = read_all(settings, dead_letter_topic(project), 7)
    docs = [json.loads(r.value) for r in letters]
    assert [(d["offset"], d["reason"]) for d in docs] == expected_reasons
    for doc in docs:
        assert doc["topic"] == events_topic(project) and doc["partition"] == 0
        assert isinstance(doc["ts"], int) and doc["ts"] > 0
        original = values[doc["offset"]]
        if doc["raw_encoding"] == "base64":
            assert base64.b64decode(doc["raw"]) == original
        else:
            assert doc["raw"].encode() == original
    missing = next(d for d in docs if d["reason"] == "missing_field")
    assert "user_id" in missing["detail"]


def test_consume_from_given_offsets(kafka: Service) -> None:
    settings = kafka.settings
    project = f"dlq_{uuid.uuid4().hex[:8]}"
    topic = ensure_topic(settings, project, partitions=1)
    goods = [good(project, n) for n in range(10)]
    produce(settings, topic, [e.to_json().encode() for e in goods])
    with DeadLetters(settings, project) as dead:
        tail = list(consume_events(settings, project, offsets={0: 6}, dead_letters=dead))
    assert tail == goods[6:]
    assert dead.counts() == {}


def test_read_events_counts_bad_records_without_publishing(kafka: Service) -> None:
    settings = kafka.settings
    project = f"dlq_{uuid.uuid4().hex[:8]}"
    topic = ensure_topic(settings, project, partitions=1)
    produce(settings, topic, [good(project, 1).to_json().encode(), b"nope"])
    assert read_events(settings, project, timeout_s=30) == [good(project, 1)]
    try:
        read_events(settings, project, timeout_s=30, skip_bad=False)
    except ValueError as exc:
        assert "not valid JSON" in str(exc)
    else:
        raise AssertionError("skip_bad=False must raise BadEvent")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None)
    assert dead_letter_topic(project) not in consumer.topics()
    consumer.close()
