"""The offline store: every event of a project, read with SQL to build training sets.

Use ``open_offline_store(settings)`` as a context manager (or ``connect(settings)``
and ``close()``). The backend is chosen by ``settings.offline_store.type`` and
imported lazily; ClickHouse is the one backend today, embedded (chdb) or a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from twotier.config import Settings
from twotier.offline_store.base import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    OfflineStore,
    OfflineStoreCapabilities,
    OfflineStoreError,
    OfflineStoreLockTimeout,
    events_frame,
)

__all__ = [
    "EVENT_COLUMNS",
    "ITEM_COLUMNS",
    "OfflineStore",
    "OfflineStoreCapabilities",
    "OfflineStoreError",
    "OfflineStoreLockTimeout",
    "connect",
    "events_frame",
    "open_offline_store",
]


def connect(settings: Settings) -> OfflineStore:
    """Open the offline store configured in ``settings.offline_store``; close it when done.

    An embedded engine's inter-process lock is held until ``close()``.

    Raises:
        OfflineStoreLockTimeout: Another process held the embedded store too long.
        OfflineStoreError: The configured type has no backend or the engine is unreachable.
    """
    kind = settings.offline_store.type
    if kind == "clickhouse":
        from twotier.offline_store.clickhouse import ClickHouseOfflineStore

        return ClickHouseOfflineStore.from_settings(settings)
    raise OfflineStoreError(f"offline_store.type {kind!r} has no backend (available: 'clickhouse')")


@contextmanager
def open_offline_store(settings: Settings) -> Iterator[OfflineStore]:
    """The offline store for the duration of a ``with`` block (lock held throughout).

    Example:
        >>> with open_offline_store(settings) as store:  # doctest: +SKIP
        ...     store.ensure_tables("movielens")
    """
    store = connect(settings)
    try:
        yield store
    finally:
        store.close()
