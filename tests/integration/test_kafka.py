"""The local Kafka 4 broker over the real protocol, and MovieLens replay into it."""

from __future__ import annotations

import csv
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.infra.kafka import KafkaService
from twotier.infra.service import Service, StackError
from twotier.naming import events_topic
from twotier.replay import read_events, replay_movielens


def test_kafka_is_healthy_and_listens_on_loopback_only(
    kafka: Service, listening_addresses: Callable[[int], set[tuple[str, int]]]
) -> None:
    assert kafka.healthy()
    status = kafka.status()
    assert status.running and status.healthy
    assert status.pid is not None
    cfg = kafka.settings.kafka
    addresses = listening_addresses(status.pid)
    assert {("127.0.0.1", cfg.port), ("127.0.0.1", cfg.controller_port)} <= addresses
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses


def test_kafka_writes_its_log(kafka: Service) -> None:
    text = kafka.log_file.read_text()
    assert "Kafka Server started" in text


def test_produce_and_consume_over_the_real_protocol(kafka: Service) -> None:
    topic = f"twotier-test-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka.endpoint, acks="all")
    for i in range(10):
        producer.send(topic, key=b"k", value=f"message {i}".encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka.endpoint, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < 10 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
    consumer.close()
    assert values == [f"message {i}".encode() for i in range(10)]


def expected_events(movielens: Path, limit: int) -> Counter[str]:
    with open(movielens / "ratings.csv", newline="") as f:
        rows = sorted(
            (int(r["timestamp"]), int(r["userId"]), int(r["movieId"]), float(r["rating"]))
            for r in csv.DictReader(f)
        )[:limit]
    counts: Counter[str] = Counter(view=len(rows))
    counts["smile"] = sum(1 for *_, stars in rows if stars >= 4.0)
    counts["dislike"] = sum(1 for *_, stars in rows if stars <= 2.0)
    return counts


def test_replay_of_1000_ratings_reads_back(kafka: Service, movielens: Path) -> None:
    project = f"replay_{uuid.uuid4().hex[:8]}"
    expected = expected_events(movielens, 1000)

    produced = replay_movielens(kafka.settings, project, movielens, limit=1000)

    assert produced == sum(expected.values())
    events = read_events(kafka.settings, project, timeout_s=60)
    assert len(events) == produced
    assert Counter(e.action for e in events) == expected
    assert len({e.event_id for e in events}) == produced
    assert all(e.project == project for e in events)
    # Keyed by user: each user's events are in one partition, in event-time order.
    by_user: dict[str, list[int]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e.ts)
    assert all(ts == sorted(ts) for ts in by_user.values())


def test_a_second_replay_repeats_the_same_event_ids(kafka: Service, movielens: Path) -> None:
    project = f"replay_{uuid.uuid4().hex[:8]}"
    first = replay_movielens(kafka.settings, project, movielens, limit=50)
    second = replay_movielens(kafka.settings, project, movielens, limit=50)
    events = read_events(kafka.settings, project, timeout_s=60)
    assert first == second == len(events) // 2
    assert len({e.event_id for e in events}) == first


def test_replay_follows_event_time_when_sped_up(kafka: Service, movielens: Path) -> None:
    project = f"replay_{uuid.uuid4().hex[:8]}"
    with open(movielens / "ratings.csv", newline="") as f:
        stamps = sorted(int(r["timestamp"]) for r in csv.DictReader(f))[:40]
    span_s = stamps[-1] - stamps[0]
    assert span_s > 0
    speedup = span_s / 1.5  # replay the event-time span in 1.5 s of wall time
    started = time.monotonic()
    replay_movielens(kafka.settings, project, movielens, limit=40, speedup=speedup)
    assert time.monotonic() - started >= 1.4
    with pytest.raises(ValueError, match="speedup must be > 0"):
        replay_movielens(kafka.settings, project, movielens, limit=1, speedup=0)


def test_read_events_of_a_missing_topic_is_empty(kafka: Service) -> None:
    assert read_events(kafka.settings, f"missing_{uuid.uuid4().hex[:8]}", timeout_s=5) == []
    assert events_topic("x") == "twotier.x.events"


def test_replay_to_an_unreachable_broker_names_it(settings: Settings, movielens: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    nowhere = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"port": free_port})}
    )
    with pytest.raises(TwotierError, match=rf"kafka at 127.0.0.1:{free_port}: .*Fix: start"):
        replay_movielens(nowhere, "movielens", movielens, limit=10)


def test_second_install_downloads_nothing(
    kafka: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = KafkaService(kafka.settings)
    marker = service.libs_dir / ".complete"
    before = (marker.read_text(), marker.stat().st_mtime_ns, sorted(os.listdir(service.libs_dir)))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: any download attempt would fail
    started = time.monotonic()
    service.install()
    assert time.monotonic() - started < 2
    after = (marker.read_text(), marker.stat().st_mtime_ns, sorted(os.listdir(service.libs_dir)))
    assert after == before
    assert "org.apache.kafka:kafka_2.13:" in before[0]
    assert any(name.startswith("log4j-slf4j") for name in before[2])


def test_start_on_a_taken_port_names_the_port(kafka: Service, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        taken = kafka.settings.model_copy(
            update={
                "data_dir": tmp_path,
                "kafka": kafka.settings.kafka.model_copy(update={"port": port}),
            }
        )
        with pytest.raises(StackError, match=rf"port 127.0.0.1:{port} is already in use"):
            KafkaService(taken).start()
    assert not (tmp_path / "kafka" / "server.properties").exists()


def test_status_lag_now_is_the_topics_end_minus_what_the_job_processed(kafka: Service) -> None:
    from twotier.feature_jobs.status import lags_now
    from twotier.replay import ensure_topic

    settings = kafka.settings
    project = f"lag_{uuid.uuid4().hex[:8]}"
    topic = ensure_topic(settings, project, partitions=2)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    for k in range(7):
        producer.send(topic, value=b"{}", partition=k % 2)
    producer.flush()
    producer.close()
    statuses = {
        project: {"project": project, "processed_offsets": {"0": 2}},  # 4 + 3 written
        "lag_never_created": {"project": "lag_never_created", "processed_offsets": {}},
    }
    assert lags_now(settings, statuses) == {project: (4 - 2) + 3, "lag_never_created": 0}
    assert lags_now(settings, {}) == {}
    away = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"port": _free_port()})}
    )
    assert lags_now(away, statuses, timeout_s=0.5) is None  # broker away: unknown, no hang


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
