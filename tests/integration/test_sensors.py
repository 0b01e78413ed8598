"""The new-offline-data sensor against the real embedded (chdb) offline store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from twotier.config import Settings
from twotier.events import Event
from twotier.offline_store import open_offline_store
from twotier.offline_store.base import events_frame
from twotier.pipelines.jobs import make_retrain_job
from twotier.pipelines.resources import OfflineStoreResource, make_resources
from twotier.pipelines.sensors import (
    SENSOR_LOCK_TIMEOUT_S,
    NewDataCursor,
    make_new_data_sensor,
)

THRESHOLD = 50


def _events(project: str, n: int, start_ts: int) -> list[Event]:
    return [
        Event(
            event_id=uuid.uuid4().hex,
            project=project,
            user_id=f"u{i % 7}",
            item_id=f"i{i % 11}",
            action="view",
            ts=start_ts + i,
        )
        for i in range(n)
    ]


def _store(settings: Settings, project: str, events: list[Event]) -> None:
    with open_offline_store(settings) as store:
        store.ensure_tables(project)
        store.insert_events(project, events_frame(events))


def _evaluate(
    sensor: dg.SensorDefinition, settings: Settings, cursor: str | None
) -> dg.SensorExecutionData:
    resources = {"offline_store": make_resources(settings)["offline_store"]}
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def test_new_data_sensor_requests_a_retrain_only_after_enough_events(settings: Settings) -> None:
    project = f"sensor_{uuid.uuid4().hex[:8]}"
    sensor = make_new_data_sensor(project, make_retrain_job(project), [], min_new_events=THRESHOLD)

    # No table yet: nothing to do, and the reason says how many events there are.
    empty = _evaluate(sensor, settings, None)
    assert not empty.run_requests
    assert empty.skip_message and "0 new events" in empty.skip_message

    _store(settings, project, _events(project, THRESHOLD - 1, 1_700_000_000_000))
    short = _evaluate(sensor, settings, None)
    assert not short.run_requests
    assert short.skip_message and f"{THRESHOLD - 1} new events" in short.skip_message
    assert short.cursor is None  # no request, no cursor move

    _store(settings, project, _events(project, 1, 1_700_000_100_000))
    due = _evaluate(sensor, settings, short.cursor)
    [request] = due.run_requests or []
    assert request.job_name == f"{project}_retrain"
    assert request.tags["twotier/new_events"] == str(THRESHOLD)
    assert request.run_key == f"{project}-events-{THRESHOLD}-1700000100000"
    assert NewDataCursor.parse(due.cursor) == NewDataCursor(THRESHOLD, 1_700_000_100_000)

    # The cursor advanced: the same events do not trigger again, nor do a few more.
    again = _evaluate(sensor, settings, due.cursor)
    assert not again.run_requests and again.skip_message
    assert "0 new events" in again.skip_message
    _store(settings, project, _events(project, THRESHOLD - 10, 1_700_000_200_000))
    few = _evaluate(sensor, settings, due.cursor)
    assert not few.run_requests
    _store(settings, project, _events(project, 10, 1_700_000_300_000))
    second = _evaluate(sensor, settings, due.cursor)
    assert len(second.run_requests or []) == 1
    assert json.loads(second.cursor or "{}")["events"] == 2 * THRESHOLD

    # Re-storing the same events (idempotent by event_id) is no new data.
    with open_offline_store(settings) as store:
        assert store.count_events(project) == 2 * THRESHOLD


def test_an_embedded_store_held_by_another_process_is_a_skip(settings: Settings) -> None:
    """A run holding the chdb folder makes the tick wait briefly, then skip with the reason."""
    project = f"sensor_{uuid.uuid4().hex[:8]}"
    sensor = make_new_data_sensor(project, make_retrain_job(project), [], min_new_events=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from twotier.offline_store import open_offline_store\n"
            "with open_offline_store(__import__('twotier.config').config.load_settings()):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = _evaluate(sensor, settings, None)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert not result.run_requests
    assert result.skip_message and "still locked" in result.skip_message
    assert SENSOR_LOCK_TIMEOUT_S <= waited < SENSOR_LOCK_TIMEOUT_S + 30


def test_an_unreachable_store_is_a_skip_not_a_failure(settings: Settings) -> None:
    """A server DSN nobody listens on makes the tick a skip."""
    project = f"sensor_{uuid.uuid4().hex[:8]}"
    sensor = make_new_data_sensor(project, make_retrain_job(project), [], min_new_events=1)
    resources = {
        "offline_store": OfflineStoreResource(dsn="http://default:x@127.0.0.1:1", database="db")
    }
    with dg.build_sensor_context(resources=resources) as context:
        result = sensor.evaluate_tick(context)
    assert not result.run_requests
    assert result.skip_message and "offline store not readable now" in result.skip_message


def test_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="min_new_events is -1"):
        make_new_data_sensor("movielens", make_retrain_job("movielens"), [], min_new_events=-1)
