"""The validate mode on real Kafka, FerretDB and chdb: each check passes and fails."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kafka import KafkaProducer

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_jobs.validate import CheckResult, ValidationJobError, run_validation
from twotier.features.online import OnlineFeatures
from twotier.generate import MemeFeed, MemeFeedConfig
from twotier.infra.service import Service
from twotier.naming import events_topic
from twotier.offline_store import events_frame, open_offline_store
from twotier.replay import ensure_topic


def _project(settings: Settings) -> tuple[Settings, str]:
    project = f"va_{uuid.uuid4().hex[:8]}"
    projects = {**settings.projects, project: settings.projects["memes"]}
    return settings.model_copy(update={"projects": projects}), project


def _events(project: str, n: int, seed: int = 1) -> list[Event]:
    now = time.time_ns() // 1_000_000
    feed = MemeFeed(MemeFeedConfig(users=20, items=30, seed=seed, start_ts_ms=now - 60_000))
    return list(feed.events(project, limit=n))


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_topic_recent(settings: Settings, kafka: Service) -> None:
    settings, project = _project(settings)
    missing = run_validation(settings, project, checks=["topic"])
    assert [r.passed for r in missing] == [False]
    assert "does not exist" in missing[0].message

    ensure_topic(settings, project, partitions=2)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    two_hours_ago = time.time_ns() // 1_000_000 - 2 * 3600 * 1000
    for i in range(5):
        producer.send(events_topic(project), value=b"{}", timestamp_ms=two_hours_ago + i)
    producer.flush()
    stale = run_validation(settings, project, checks=["topic"], recent_minutes=60)[0]
    assert not stale.passed and stale.value == 0 and stale.severity == "ERROR"

    for e in _events(project, 7):
        producer.send(events_topic(project), value=e.to_json().encode())
    producer.flush()
    producer.close()
    fresh = run_validation(settings, project, checks=["topic"], recent_minutes=60)[0]
    assert fresh.passed and fresh.value == 7
    json.dumps([r.model_dump() for r in (stale, fresh)])  # JSON-serialisable


def test_online_matches_offline(settings: Settings, online_server: Service) -> None:
    settings, project = _project(settings)
    events = _events(project, 600)
    with open_offline_store(settings) as store:
        store.ensure_tables(project)
        store.insert_events(project, events_frame(events))
    with OnlineFeatures(settings) as online:
        online.write(project, events[:300], batch_key="test", batch_id=0)
        online.write(project, events[300:], batch_key="test", batch_id=1)
    results = _by_name(run_validation(settings, project, checks=["online"]))
    assert set(results) == {
        "online_matches_offline.user_stats",
        "online_matches_offline.item_stats",
        "online_matches_offline.user_item",
    }
    assert all(r.passed and r.value == 0 for r in results.values()), results

    # 600 more events online only: the online totals run ahead of the offline store.
    with OnlineFeatures(settings) as online:
        online.write(project, _events(project, 600, seed=2), batch_key="test", batch_id=2)
    failed = _by_name(run_validation(settings, project, checks=["online"], tolerance=0.05))
    check = failed["online_matches_offline.user_stats"]
    assert not check.passed and check.value is not None and check.value > 0.5
    assert "offline" in check.message and check.threshold == 0.05
    # A generous tolerance accepts the same data.
    loose = run_validation(settings, project, checks=["online"], tolerance=10.0)
    assert all(r.passed for r in loose)


def test_events_table_checks(settings: Settings) -> None:
    settings, project = _project(settings)
    good = _events(project, 200)
    with open_offline_store(settings) as store:
        store.ensure_tables(project)
        store.insert_events(project, events_frame(good))
    passed = _by_name(run_validation(settings, project, checks=["events"], value_range=(0, 5)))
    assert [n for n, r in passed.items() if not r.passed] == []
    assert set(passed) == {
        "events_ids_not_empty",
        "events_ts_range",
        "events_known_actions",
        "events_value_range",
    }

    now = time.time_ns() // 1_000_000
    base = {"project": project, "item_id": "m1", "context": {}}
    bad = [
        {**base, "event_id": "b1", "user_id": "", "action": "view", "value": 1.0, "ts": now},
        {**base, "event_id": "b2", "user_id": "u", "action": "view", "value": 1.0, "ts": 1_700},
        {**base, "event_id": "b3", "user_id": "u", "action": "teleport", "value": 1.0, "ts": now},
        {**base, "event_id": "b4", "user_id": "u", "action": "view", "value": 1e9, "ts": now},
    ]
    import pandas as pd

    with open_offline_store(settings) as store:
        store.insert_events(project, pd.DataFrame(bad))
    failed = _by_name(run_validation(settings, project, checks=["events"], value_range=(0, 5)))
    assert {n: (r.passed, r.value) for n, r in failed.items()} == {
        "events_ids_not_empty": (False, 1.0),
        "events_ts_range": (False, 1.0),
        "events_known_actions": (False, 1.0),
        "events_value_range": (False, 1.0),
    }
    assert failed["events_known_actions"].severity == "WARN"
    assert "teleport" in failed["events_known_actions"].message


def test_bad_arguments(settings: Settings) -> None:
    with pytest.raises(ValidationJobError, match="unknown check"):
        run_validation(settings, "memes", checks=["nope"])
    with pytest.raises(ValidationJobError, match="tolerance"):
        run_validation(settings, "memes", tolerance=-1)


def test_cli_prints_json_and_fails_on_errors(settings: Settings, kafka: Service) -> None:
    import os
    import subprocess
    import sys

    settings, project = _project(settings)
    with open_offline_store(settings) as store:
        store.ensure_tables(project)
        store.insert_events(project, events_frame(_events(project, 20)))
    env = {**os.environ, **settings.to_env()}
    command = [sys.executable, "-m", "twotier.feature_jobs", "validate", "--project", project]
    ok = subprocess.run([*command, "--check", "events"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert {r["name"] for r in json.loads(ok.stdout)} >= {"events_ts_range"}
    # An unknown project's topic does not exist: topic_recent fails with severity ERROR.
    bad = subprocess.run([*command, "--check", "topic"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)[0]["passed"] is False
