"""The offline store as a Dagster resource.

Assets that open an embedded (chdb) store should declare ``pool="offline_store"``
(``OFFLINE_STORE_POOL``) so Dagster runs them one at a time; the store's
inter-process lock keeps other processes safe even without the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.offline_store import OfflineStore

OFFLINE_STORE_POOL = "offline_store"
"""The Dagster concurrency pool of assets that open the offline store."""


class OfflineStoreResource(dg.ConfigurableResource):
    """The ClickHouse offline store: ``chdb:///path`` (embedded) or ``http(s)://`` (server)."""

    dsn: str
    database: str = "twotier"
    lock_timeout_s: float = 120.0
    """How long to wait for another process that holds an embedded store."""

    @classmethod
    def from_settings(cls, settings: Settings) -> OfflineStoreResource:
        """The resource for ``settings.offline_store`` (chdb under the data folder by default)."""
        return cls(
            dsn=settings.offline_store_dsn,
            database=settings.offline_store.database,
            lock_timeout_s=settings.offline_store.lock_timeout_s,
        )

    @contextmanager
    def open(self) -> Iterator[OfflineStore]:
        """The store for a ``with`` block; an embedded store is locked to this process.

        Raises:
            OfflineStoreLockTimeout: Another process held the embedded store too long.
            OfflineStoreError: The store cannot be opened.
        """
        from twotier.offline_store.clickhouse import ClickHouseOfflineStore

        config = ClickHouseOfflineStoreConfig(
            dsn=self.dsn, database=self.database, lock_timeout_s=self.lock_timeout_s
        )
        store = ClickHouseOfflineStore.open(self.dsn, config)
        try:
            yield store
        finally:
            store.close()
