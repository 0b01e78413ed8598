"""The online store: per-entity features for serving, written exactly once by the streaming job.

Use ``connect(settings)``; the backend is chosen by ``settings.online_store.type`` and
imported lazily, so only the client library of the configured backend is needed.
"""

from __future__ import annotations

from twotier.config import Settings
from twotier.online_store.base import (
    ApplyResult,
    OnlineStore,
    OnlineStoreCapabilities,
    OnlineStoreError,
    Read,
)

__all__ = [
    "ApplyResult",
    "OnlineStore",
    "OnlineStoreCapabilities",
    "OnlineStoreError",
    "Read",
    "connect",
]


def connect(settings: Settings) -> OnlineStore:
    """Open the online store configured in ``settings.online_store``.

    Raises:
        OnlineStoreError: The configured type has no backend.
    """
    kind = settings.online_store.type
    if kind == "mongodb":
        from twotier.online_store.mongodb import MongoDBOnlineStore

        return MongoDBOnlineStore.from_settings(settings)
    raise OnlineStoreError(f"online_store.type {kind!r} has no backend (available: 'mongodb')")
