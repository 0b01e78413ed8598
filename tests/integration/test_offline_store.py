"""The ClickHouse offline store on a real embedded chdb engine, from one and two processes."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.offline_store import (
    OfflineStoreError,
    OfflineStoreLockTimeout,
    connect,
    open_offline_store,
)
from twotier.offline_store.clickhouse import (
    ClickHouseOfflineStore,
    backend_of,
    chdb_data_path,
    lock_path,
)

PROJECT = "movielens"


def _events(start: int, count: int, user: str = "u1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(start, start + count)],
            "project": PROJECT,
            "user_id": user,
            "item_id": [str(i % 7) for i in range(start, start + count)],
            "action": "view",
            "value": [float(i % 5) for i in range(start, start + count)],
            "ts": [1_700_000_000_000 + i for i in range(start, start + count)],
            "context": [{"source": "test"}] * count,
        }
    )


def _settings(settings: Settings, data: Path, lock_timeout_s: float = 60.0) -> Settings:
    config = ClickHouseOfflineStoreConfig(dsn=f"chdb://{data}", lock_timeout_s=lock_timeout_s)
    return settings.model_copy(update={"offline_store": config})


# -- one process ---------------------------------------------------------------


def test_tables_idempotent_load_and_query(settings: Settings, tmp_path: Path) -> None:
    local = _settings(settings, tmp_path / "offline")
    with open_offline_store(local) as store:
        assert store.capabilities.embedded and store.capabilities.single_process
        assert store.count_events(PROJECT) == 0  # no table yet
        store.ensure_tables(PROJECT)
        store.ensure_tables(PROJECT)  # idempotent
        assert store.insert_events(PROJECT, _events(0, 100)) == 100
        assert store.insert_events(PROJECT, _events(0, 100)) == 0
        duplicated = pd.concat([_events(50, 100), _events(120, 10)])  # overlaps and repeats
        assert store.insert_events(PROJECT, duplicated) == 50
        assert store.count_events(PROJECT) == 150
        rows = store.query_df(
            f"SELECT event_id, value, context FROM {store.table(PROJECT, 'events')} "
            "WHERE value >= {v:Float64} ORDER BY event_id LIMIT 3",
            {"v": 4.0},
        )
        assert rows["event_id"].tolist() == ["e104", "e109", "e114"]
        assert rows["value"].tolist() == [4.0, 4.0, 4.0]
        assert rows["context"].iloc[0] == {"source": "test"}
        assert store.table(PROJECT, "events") == "`twotier`.`movielens__events`"
    # The data outlives the process's engine: reopen and read it back.
    with open_offline_store(local) as store:
        assert store.count_events(PROJECT) == 150


def test_bad_frames_and_sql_are_rejected_with_the_reason(
    settings: Settings, tmp_path: Path
) -> None:
    with open_offline_store(_settings(settings, tmp_path / "offline")) as store:
        store.ensure_tables(PROJECT)
        with pytest.raises(OfflineStoreError, match=r"lacks columns \['ts'\]"):
            store.insert_events(PROJECT, _events(0, 3).drop(columns=["ts"]))
        other = _events(0, 3).assign(project="books")
        with pytest.raises(OfflineStoreError, match=r"holds events of \['books'\]"):
            store.insert_events(PROJECT, other)
        with pytest.raises(OfflineStoreError, match="empty event_id"):
            store.insert_events(PROJECT, _events(0, 2).assign(event_id=""))
        with pytest.raises(OfflineStoreError, match="refused 'SELECT no_such_column'"):
            store.query_df("SELECT no_such_column")
        assert store.count_events(PROJECT) == 0
        assert store.insert_events(PROJECT, _events(0, 0)) == 0


def test_same_process_shares_the_engine_and_closed_stores_refuse(
    settings: Settings, tmp_path: Path
) -> None:
    local = _settings(settings, tmp_path / "offline")
    outer = connect(local)
    try:
        outer.ensure_tables(PROJECT)
        with open_offline_store(local) as inner:  # same path, same process: shared
            inner.insert_events(PROJECT, _events(0, 5))
        assert outer.count_events(PROJECT) == 5  # still open after the inner one closed
        assert lock_path(tmp_path / "offline").exists()
        with pytest.raises(OfflineStoreError, match="one data folder per process"):
            open_offline_store(_settings(settings, tmp_path / "elsewhere")).__enter__()
    finally:
        outer.close()
    outer.close()  # closing twice is a no-op
    with pytest.raises(OfflineStoreError, match="closed"):
        outer.count_events(PROJECT)
    # Once closed, the process may open another folder.
    with open_offline_store(_settings(settings, tmp_path / "elsewhere")) as store:
        assert store.count_events(PROJECT) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_dsn_selects_the_server_path_without_a_lock(
    settings: Settings, tmp_path: Path
) -> None:
    dsn = f"http://default:secret@127.0.0.1:{_free_port()}"
    assert backend_of(dsn) == "http"
    assert backend_of("https://h:8443") == "http"
    assert chdb_data_path(dsn) is None
    assert chdb_data_path(f"chdb://{tmp_path}/x/../off") == tmp_path / "off"
    assert chdb_data_path("chdb://memory") is None
    with pytest.raises(OfflineStoreError, match="has scheme 'mysql'"):
        backend_of("mysql://h")
    config = ClickHouseOfflineStoreConfig(dsn=dsn, lock_timeout_s=1)
    with pytest.raises(OfflineStoreError, match="ClickHouse server") as err:
        ClickHouseOfflineStore.open(dsn, config)
    assert "secret" not in str(err.value)
    assert ":***@" in str(err.value)
    assert not list(tmp_path.iterdir())  # no lock file for a server


# -- two processes -------------------------------------------------------------


def _insert_worker(dsn: str, start: int, count: int, hold_s: float, results: Any) -> None:
    """Child process: open the store, insert distinct events, hold it a while, report."""
    config = ClickHouseOfflineStoreConfig(dsn=dsn, lock_timeout_s=60)
    try:
        with ClickHouseOfflineStore.open(dsn, config) as store:
            opened = time.time()
            store.ensure_tables(PROJECT)
            inserted = store.insert_events(PROJECT, _events(start, count, user=f"u{start}"))
            time.sleep(hold_s)
            closing = time.time()
        results.put({"start": start, "inserted": inserted, "opened": opened, "closing": closing})
    except BaseException as exc:
        results.put({"start": start, "error": repr(exc)})


def _hold_worker(dsn: str, opened: Any, stop: Any) -> None:
    """Child process: hold the store until told to stop."""
    import os

    config = ClickHouseOfflineStoreConfig(dsn=dsn, lock_timeout_s=60)
    with ClickHouseOfflineStore.open(dsn, config):
        opened.put(os.getpid())
        stop.wait(60)


def test_two_processes_insert_concurrently_on_one_chdb_path(
    settings: Settings, tmp_path: Path
) -> None:
    dsn = f"chdb://{tmp_path / 'offline'}"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_insert_worker, args=(dsn, start, 400, 1.5, results))
        for start in (0, 10_000)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert all("error" not in r for r in reports), reports
    assert sorted(r["inserted"] for r in reports) == [400, 400]
    first, second = sorted(reports, key=lambda r: r["opened"])
    assert second["opened"] >= first["closing"], "the two processes held the engine at once"
    with open_offline_store(_settings(settings, tmp_path / "offline")) as store:
        assert store.count_events(PROJECT) == 800
        users = store.query_df(
            f"SELECT user_id, count() AS n FROM {store.table(PROJECT, 'events')} "
            "GROUP BY user_id ORDER BY user_id"
        )
        assert users.to_dict("list") == {"user_id": ["u0", "u10000"], "n": [400, 400]}


def test_lock_timeout_names_the_path_and_the_holder(settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "offline"
    ctx = mp.get_context("spawn")
    opened, stop = ctx.Queue(), ctx.Event()
    holder = ctx.Process(target=_hold_worker, args=(f"chdb://{data}", opened, stop))
    holder.start()
    try:
        pid = opened.get(timeout=120)
        started = time.monotonic()
        with pytest.raises(OfflineStoreLockTimeout) as err:
            connect(_settings(settings, data, lock_timeout_s=1.0))
        waited = time.monotonic() - started
        assert 0.9 <= waited < 10
        message = str(err.value)
        assert str(data) in message
        assert f"pid {pid}" in message
        assert "lock_timeout_s" in message
    finally:
        stop.set()
        holder.join(60)
    assert holder.exitcode == 0
    # Released by the holder: this process can open it now.
    with open_offline_store(_settings(settings, data, lock_timeout_s=5.0)) as store:
        assert store.count_events(PROJECT) == 0
