"""Stored feature documents per entity, reused for a bounded time by every request.

Item documents are shared by all users' requests, so a replica keeps them per
(namespace, entity id) — a namespace is one collection read with one list of fields —
for at most ``ttl_s`` seconds, least recently used beyond ``max_entries``. An entity the
store has no document for is cached too (as None: its features take their defaults), so
a catalogue item without events does not cost a read on every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twotier.features.online import Doc

DEFAULT_MAX_ENTRIES = 200_000
"""Entity documents one replica keeps at most (a few hundred bytes each)."""


@dataclass
class Lookup:
    """What the cache holds of one namespace's ids.

    Attributes:
        found: Per cached id, its document (None: the store had none).
        missing: Ids to read from the store (absent or expired), first occurrence order.
        oldest_age_s: Age of the oldest document in ``found``; 0.0 when nothing was found.
    """

    found: dict[str, Doc]
    missing: list[str]
    oldest_age_s: float = 0.0


def namespace(collection: str, fields: Sequence[str] | None) -> str:
    """The cache namespace of a collection read with ``fields`` (a document holds only those)."""
    return f"{collection}|{','.join(fields) if fields is not None else '*'}"


class EntityCache:
    """Feature documents per (namespace, entity id), each valid for ``ttl_s``; thread-safe.

    An entry older than ``ttl_s`` is a miss (and dropped); the age counts from when the
    read that produced it was issued, so a document is never served staler than ``ttl_s``.

    Args:
        ttl_s: Longest time an entry is served; 0 turns the cache off (every id misses).
        max_entries: Entries kept at most; the least recently used go first.
        clock: Monotonic clock in seconds.

    Raises:
        ValueError: ``ttl_s`` is negative or ``max_entries`` below 1.
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"entity cache ttl_s={ttl_s}: use 0 (off) or a positive number")
        if max_entries < 1:
            raise ValueError(f"entity cache max_entries={max_entries}: keep at least 1 entry")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[Doc, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether anything is cached (``ttl_s`` > 0)."""
        return self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, space: str, ids: Sequence[str], now: float | None = None) -> Lookup:
        """The fresh cached documents of ``ids`` and the ids to read.

        Args:
            space: The namespace (``namespace(collection, fields)``).
            ids: Entity ids; duplicates are looked up once.
            now: The clock's time of the request; read from the clock when None.

        Returns:
            Found documents, missing ids and the oldest age among the found ones.
        """
        unique = list(dict.fromkeys(ids))
        if not self.enabled:
            return Lookup({}, unique)
        now = self.clock() if now is None else now
        found: dict[str, Doc] = {}
        missing: list[str] = []
        oldest = 0.0
        entries = self._entries
        with self._lock:
            for entity in unique:
                key = (space, entity)
                entry = entries.get(key)
                if entry is None:
                    missing.append(entity)
                    continue
                age = now - entry[1]
                if age >= self.ttl_s:
                    del entries[key]
                    missing.append(entity)
                    continue
                entries.move_to_end(key)
                found[entity] = entry[0]
                oldest = max(oldest, age)
        return Lookup(found, missing, oldest)

    def store(
        self, space: str, ids: Sequence[str], docs: Mapping[str, Doc], read_at: float
    ) -> None:
        """Remember what one read answered for ``ids``; ids it lacks are cached as None.

        Args:
            space: The namespace the read was made in.
            ids: The ids that were read.
            docs: The read's answer (``OnlineStore.get_many`` shape); treated as read-only.
            read_at: The clock's time when the read was issued.
        """
        if not self.enabled:
            return
        entries = self._entries
        with self._lock:
            for entity in ids:
                key = (space, entity)
                entries[key] = (docs.get(entity), read_at)
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
