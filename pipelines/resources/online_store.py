"""The online store as a Dagster resource: per-entity features on the MongoDB wire protocol."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from twotier.config import MongoDBOnlineStoreConfig, Settings
from twotier.features.online import OnlineFeatures
from twotier.online_store import OnlineStore


class OnlineStoreResource(dg.ConfigurableResource):
    """The online store (FerretDB locally, MongoDB in production) that serving reads."""

    uri: str
    """``mongodb://host:port/`` of the server."""
    database: str = "twotier"

    @classmethod
    def from_settings(cls, settings: Settings) -> OnlineStoreResource:
        """The resource for ``settings.online_store`` (the local FerretDB by default)."""
        return cls(uri=settings.online_store_uri, database=settings.online_store.database)

    def settings(self, settings: Settings | None = None) -> Settings:
        """``settings`` (default: the built-in projects) pointed at this resource's store."""
        base = settings or Settings()
        config = MongoDBOnlineStoreConfig(uri=self.uri, database=self.database)
        return base.model_copy(update={"online_store": config})

    @contextmanager
    def open(self) -> Iterator[OnlineStore]:
        """A store client for a ``with`` block (connects lazily, closed at the end).

        Raises:
            OnlineStoreError: The server is unreachable when first used.
        """
        from twotier.online_store.mongodb import MongoDBOnlineStore

        store = MongoDBOnlineStore.from_settings(self.settings())
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def features(self, settings: Settings) -> Iterator[OnlineFeatures]:
        """Feature reads and writes of ``settings``' projects against this store.

        Args:
            settings: The project declarations (feature groups and model features); the
                connection comes from the resource.
        """
        features = OnlineFeatures(self.settings(settings))
        try:
            yield features
        finally:
            features.close()
