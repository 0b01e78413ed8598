"""The offline store on ClickHouse through clickhouse-connect: embedded chdb or a server.

``offline_store.dsn`` picks the engine with the same code: ``chdb:///path`` runs
ClickHouse inside this process on a data folder, ``http(s)://user:pw@host:port`` talks
to a server. chdb lets only one process open a data folder at a time (a second one
fails at once with "Another server instance in same directory is already running"),
so an embedded store holds an inter-process file lock, ``<data folder>.lock``, for as
long as it is open; other processes wait for it up to ``offline_store.lock_timeout_s``.
Within a process, stores on the same folder share that lock (reference counted), each
with its own client: chdb hosts one engine per process and clients share it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import clickhouse_connect
import pandas as pd
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from filelock import FileLock, Timeout

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.naming import offline_table
from twotier.offline_store.base import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    OfflineStore,
    OfflineStoreCapabilities,
    OfflineStoreError,
    OfflineStoreLockTimeout,
    check_events_frame,
    check_items_frame,
)

log = logging.getLogger(__name__)

Backend = Literal["chdb", "http"]

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {table}
(
    event_id String,
    user_id String,
    item_id String,
    action LowCardinality(String),
    value Float64,
    ts Int64 COMMENT 'milliseconds since the Unix epoch (twotier.events.Event.ts)',
    context Map(String, String)
)
ENGINE = ReplacingMergeTree
ORDER BY (user_id, ts, event_id)
COMMENT 'twotier events of one project, one row per event_id'
"""
"""The events table: sorted by user and time for per-user windows and ASOF joins.

Deduplication is two-layered. ``insert_events`` anti-joins the batch against the
stored ids (exact whenever writers do not race, which the embedded engine's
single-process lock guarantees). Concurrent writers to a server may still store a
duplicate; ReplacingMergeTree collapses rows with equal sorting keys on merge, and an
event's sorting key (user, ts, id) is a function of its id, so reads that must be
exact under concurrent writers use ``FINAL`` (``count_events`` does).
"""

ITEMS_DDL = """
CREATE TABLE IF NOT EXISTS {table}
(
    item_id String,
    attributes Map(String, Array(String)) COMMENT 'e.g. genres -> [Comedy, Drama]',
    updated_ms Int64 COMMENT 'when this version was stored (ms); the latest wins'
)
ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY item_id
COMMENT 'twotier items of one project, one row per item_id (read with FINAL)'
"""
"""The items table: attributes per item, replaced as a whole when they change."""

_OPEN_RETRY_S = 0.25
_ENGINE_BUSY = ("Another server instance", "Cannot lock file")


# -- DSN → backend --------------------------------------------------------------


def backend_of(dsn: str) -> Backend:
    """The engine a DSN selects: ``chdb`` for ``chdb:``, ``http`` for ``http(s)://``.

    Raises:
        OfflineStoreError: The scheme is neither.
    """
    scheme = urlparse(dsn).scheme
    if scheme == "chdb":
        return "chdb"
    if scheme in ("http", "https"):
        return "http"
    raise OfflineStoreError(
        f"offline_store.dsn {dsn!r} has scheme {scheme!r}: use chdb:///absolute/path "
        "(embedded) or http(s)://user:password@host:port (ClickHouse server)"
    )


def chdb_data_path(dsn: str) -> Path | None:
    """The data folder of a ``chdb:`` DSN, or None for an in-memory engine or a server."""
    if backend_of(dsn) != "chdb":
        return None
    parsed = urlparse(dsn)
    location = parsed.path if not parsed.netloc else parsed.netloc
    if location in ("", "memory", ":memory:"):
        return None
    return Path(os.path.realpath(location))


def lock_path(data_path: Path) -> Path:
    """The inter-process lock file beside a chdb data folder (``<folder>.lock``)."""
    return data_path.with_name(data_path.name + ".lock")


def owner_path(data_path: Path) -> Path:
    """The file naming the process that holds the lock (``<folder>.lock.owner``)."""
    return data_path.with_name(data_path.name + ".lock.owner")


# -- the per-process engine lock -------------------------------------------------


@dataclass
class _EngineLock:
    """This process's hold on one chdb data folder, shared by all its stores."""

    data_path: Path
    lock: FileLock
    pid: int
    users: int = 0


_locks: dict[Path, _EngineLock] = {}
_locks_guard = threading.Lock()
_acquire_guard = threading.Lock()


def _holder(data_path: Path) -> str:
    try:
        return owner_path(data_path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _acquire(data_path: Path, timeout_s: float) -> _EngineLock:
    """Take (or share) this process's lock on ``data_path``, waiting up to ``timeout_s``."""
    with _acquire_guard:  # one thread at a time waits for the file lock
        with _locks_guard:
            for path in [p for p, held in _locks.items() if held.pid != os.getpid()]:
                del _locks[path]  # inherited through fork: the parent owns those
            held = _locks.get(data_path)
            if held is not None:
                held.users += 1
                return held
            if _locks:
                other = next(iter(_locks))
                raise OfflineStoreError(
                    f"this process (pid {os.getpid()}) has the embedded offline store at "
                    f"{other} open; chdb hosts one data folder per process, so close those "
                    f"stores before opening {data_path}"
                )
        data_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path(data_path)), thread_local=False)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info(
                "offline store %s is held by %s; waiting up to %.0f s",
                data_path,
                _holder(data_path),
                timeout_s,
            )
            try:
                lock.acquire(timeout=timeout_s, poll_interval=0.1)
            except Timeout:
                raise OfflineStoreLockTimeout(
                    f"offline store {data_path} is still locked by {_holder(data_path)} "
                    f"after {timeout_s:g} s (lock file {lock_path(data_path)}): the embedded "
                    "chdb engine allows one process per data folder; wait for or stop that "
                    "process, raise offline_store.lock_timeout_s, or point offline_store.dsn "
                    "at a ClickHouse server"
                ) from None
        owner_path(data_path).write_text(f"pid {os.getpid()}\n")
        held = _EngineLock(data_path, lock, os.getpid(), users=1)
        with _locks_guard:
            _locks[data_path] = held
        return held


def _release(held: _EngineLock) -> None:
    """Give back one share of the lock; the last share unlocks the folder."""
    with _locks_guard:
        held.users -= 1
        if held.users > 0 or _locks.get(held.data_path) is not held:
            return
        del _locks[held.data_path]
    owner_path(held.data_path).unlink(missing_ok=True)
    held.lock.release(force=True)


def _open_chdb(dsn: str, data_path: Path, deadline: float) -> Client:
    """Open a chdb client, retrying while a previous owner's engine is still shutting down."""
    while True:
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{data_path}")
        except ClickHouseError as exc:
            if not any(m in str(exc) for m in _ENGINE_BUSY) or time.monotonic() >= deadline:
                raise OfflineStoreError(
                    f"cannot open the embedded offline store {dsn}: {exc} (another program "
                    "may use the folder without twotier's lock; stop it)"
                ) from exc
            time.sleep(_OPEN_RETRY_S)


# -- the store -------------------------------------------------------------------


class ClickHouseOfflineStore(OfflineStore):
    """Events in ClickHouse tables ``<database>.<project>__events`` (see ``EVENTS_DDL``).

    Open with ``from_settings`` (or ``twotier.offline_store.open_offline_store``);
    for an embedded engine the inter-process lock is held until ``close()``.
    """

    def __init__(
        self,
        client: Client,
        config: ClickHouseOfflineStoreConfig,
        backend: Backend,
        engine_lock: _EngineLock | None = None,
    ) -> None:
        """Use ``client``; the store closes it (and gives back ``engine_lock``) on close."""
        self._client = client
        self._config = config
        self._backend = backend
        self._engine_lock = engine_lock
        self._closed = False
        self._guard = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouseOfflineStore:
        """Connect to ``settings.offline_store_dsn`` (chdb under the data folder by default).

        Raises:
            OfflineStoreLockTimeout: The embedded data folder stayed locked by another
                process for ``offline_store.lock_timeout_s``.
            OfflineStoreError: The DSN is invalid or the engine cannot be reached.
        """
        return cls.open(settings.offline_store_dsn, settings.offline_store)

    @classmethod
    def open(cls, dsn: str, config: ClickHouseOfflineStoreConfig) -> ClickHouseOfflineStore:
        """Connect to ``dsn`` with ``config``'s database and lock timeout (``config.dsn`` unused).

        Raises:
            OfflineStoreLockTimeout: The embedded data folder stayed locked by another
                process for ``config.lock_timeout_s``.
            OfflineStoreError: The DSN is invalid or the engine cannot be reached.
        """
        backend = backend_of(dsn)
        if backend == "http":
            try:
                client = clickhouse_connect.get_client(dsn=dsn)
            except Exception as exc:
                raise OfflineStoreError(
                    f"cannot connect to the ClickHouse server of offline_store.dsn "
                    f"{_redact(dsn)}: {exc} (is the server up? check host, port and user)"
                ) from exc
            return cls(client, config, backend)
        data_path = chdb_data_path(dsn)
        if data_path is None:
            return cls(clickhouse_connect.get_client(dsn=dsn), config, backend)
        deadline = time.monotonic() + config.lock_timeout_s
        held = _acquire(data_path, config.lock_timeout_s)
        try:
            client = _open_chdb(dsn, data_path, deadline)
        except BaseException:
            _release(held)
            raise
        return cls(client, config, backend, held)

    # -- lifecycle -----------------------------------------------------------

    @property
    def capabilities(self) -> OfflineStoreCapabilities:
        """Embedded chdb is single-process; a server is shared. Both have ASOF and windows."""
        embedded = self._backend == "chdb"
        return OfflineStoreCapabilities(
            embedded=embedded, single_process=embedded, asof_join=True, window_functions=True
        )

    @property
    def database(self) -> str:
        return self._config.database

    @property
    def client(self) -> Client:
        """The clickhouse-connect client, for what the interface does not cover."""
        self._check_open()
        return self._client

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.close()
        finally:
            if self._engine_lock is not None:
                _release(self._engine_lock)

    def _check_open(self) -> None:
        if self._closed:
            raise OfflineStoreError("offline store is closed: open a new one")

    # -- schema --------------------------------------------------------------

    def table(self, project: str, name: str) -> str:
        return f"`{self.database}`.`{offline_table(project, name)}`"

    def ensure_tables(self, project: str) -> None:
        self.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        self.command(EVENTS_DDL.format(table=self.table(project, "events")))
        self.command(ITEMS_DDL.format(table=self.table(project, "items")))

    def has_table(self, project: str, name: str) -> bool:
        exists = self.query_df(
            "SELECT count() AS n FROM system.tables WHERE database = {db:String} "
            "AND name = {name:String}",
            {"db": self.database, "name": offline_table(project, name)},
        )
        return int(exists["n"].iloc[0]) > 0

    # -- writes --------------------------------------------------------------

    def insert_events(self, project: str, events: pd.DataFrame) -> int:
        frame = check_events_frame(project, events)
        if frame.empty:
            return 0
        target = self.table(project, "events")
        staging = f"`{self.database}`.`{offline_table(project, 'staging')}_{uuid.uuid4().hex}`"
        new_rows = f"""
            SELECT * FROM {staging}
            WHERE event_id NOT IN (
                SELECT event_id FROM {target}
                WHERE user_id IN (SELECT DISTINCT user_id FROM {staging})
            )
            ORDER BY event_id
            LIMIT 1 BY event_id
        """
        self.command(f"CREATE TABLE {staging} AS {target} ENGINE = Memory")
        try:
            self._run(lambda: self._client.insert_df(staging, frame), staging)
            inserted = int(self.query_df(f"SELECT count() AS n FROM ({new_rows})")["n"].iloc[0])
            if inserted:
                columns = ", ".join(EVENT_COLUMNS)
                self.command(f"INSERT INTO {target} ({columns}) {new_rows}")
        finally:
            self.command(f"DROP TABLE IF EXISTS {staging}")
        log.info("offline store %s: %d of %d events were new", target, inserted, len(frame))
        return inserted

    def insert_items(self, project: str, items: pd.DataFrame) -> int:
        frame = check_items_frame(project, items)
        if frame.empty:
            return 0
        frame["updated_ms"] = time.time_ns() // 1_000_000
        target = self.table(project, "items")
        staging = f"`{self.database}`.`{offline_table(project, 'staging')}_{uuid.uuid4().hex}`"
        changed = f"""
            SELECT item_id, attributes, updated_ms FROM {staging}
            WHERE (item_id, attributes) NOT IN (
                SELECT item_id, attributes FROM {target} FINAL
                WHERE item_id IN (SELECT item_id FROM {staging})
            )
        """
        self.command(f"CREATE TABLE {staging} AS {target} ENGINE = Memory")
        try:
            self._run(lambda: self._client.insert_df(staging, frame), staging)
            written = int(self.query_df(f"SELECT count() AS n FROM ({changed})")["n"].iloc[0])
            if written:
                self.command(f"INSERT INTO {target} (item_id, attributes, updated_ms) {changed}")
        finally:
            self.command(f"DROP TABLE IF EXISTS {staging}")
        log.info("offline store %s: %d of %d items new or changed", target, written, len(frame))
        return written

    def read_items(self, project: str, item_ids: Iterable[str] | None = None) -> pd.DataFrame:
        if not self.has_table(project, "items"):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS})
        sql = f"SELECT item_id, attributes FROM {self.table(project, 'items')} FINAL"
        parameters: dict[str, Any] = {}
        if item_ids is not None:
            sql += " WHERE item_id IN {ids:Array(String)}"
            parameters["ids"] = [str(i) for i in item_ids]
        return self.query_df(sql + " ORDER BY item_id", parameters)

    def insert_frame(self, table: str, frame: pd.DataFrame) -> None:
        self._run(lambda: self._client.insert_df(table, frame), f"INSERT INTO {table}")

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        self._run(lambda: self._client.command(sql, parameters=dict(parameters or {})), sql)

    # -- reads ---------------------------------------------------------------

    def query_df(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pd.DataFrame:
        bound = dict(parameters or {})
        frame: pd.DataFrame = self._run(lambda: self._client.query_df(sql, parameters=bound), sql)
        return frame

    def count_events(self, project: str) -> int:
        if not self.has_table(project, "events"):
            return 0
        counted = self.query_df(f"SELECT count() AS n FROM {self.table(project, 'events')} FINAL")
        return int(counted["n"].iloc[0])

    def _run(self, call: Any, what: str) -> Any:
        self._check_open()
        try:
            return call()
        except ClickHouseError as exc:
            first_line = " ".join(what.split())[:200]
            raise OfflineStoreError(
                f"offline store ({self._backend}) refused {first_line!r}: {exc}"
            ) from exc


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@")
    return dsn
