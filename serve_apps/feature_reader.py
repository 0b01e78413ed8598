"""Online features for tier two: per-user documents read fresh, item documents cached.

Per request, ``FeatureReader`` looks the candidates' item documents up in its
``EntityCache`` (shared by every user's requests, each entry at most ``ttl_s`` old) and
asks the online store, in one ``get_groups`` call, for the user's documents (user and
userxitem groups: never reused) and only the item documents the cache lacks. The matrix
is then assembled by ``assemble_matrix``, exactly as ``OnlineFeatures.matrix_for_spec``
lays it out.

When the online store cannot be read, the matrix is built from the features' defaults,
the answer is flagged as degraded, and the store is left alone for ``retry_s`` seconds,
so an outage costs one slow read per window instead of one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from twotier.features.online import (
    Doc,
    OnlineFeatures,
    RequestValue,
    assemble_matrix,
    check_matrix_request,
    online_source,
    read_ids,
)
from twotier.features.spec import CounterFeature, FeatureGroup, ModelFeatureSpec, value_field
from twotier.online_store import OnlineStoreError, Read
from twotier.serve_apps.entity_cache import DEFAULT_MAX_ENTRIES, EntityCache, namespace

logger = logging.getLogger("ray.serve")

MAX_STALENESS_S = 60.0
"""Online features are never served older than this, whatever ``feature_cache_ttl_s`` says."""


@dataclass(frozen=True)
class FeatureRead:
    """One request's feature matrix and how it was read.

    Attributes:
        matrix: float32, one row per candidate, columns in ``spec.columns()`` order.
        degraded: Built from the features' defaults (the online store was unreadable).
        cache_hits: Item documents served from the entity cache (distinct ids).
        cache_misses: Item documents the cache lacked, read from the store.
        oldest_age_s: Age of the oldest cached document used; None when none was.
    """

    matrix: np.ndarray
    degraded: bool = False
    cache_hits: int = 0
    cache_misses: int = 0
    oldest_age_s: float | None = None


@dataclass
class _GroupPlan:
    """One feature group of a request: its ids in row order, what the cache had, what to read."""

    ids: list[str]
    read: Read
    space: str | None = None
    """The cache namespace; None for groups read fresh every time."""
    cached: dict[str, Doc] = field(default_factory=dict)
    oldest_age_s: float = 0.0


class FeatureReader:
    """Reads feature matrices for one replica: item documents cached, an outage breaker.

    Thread-safe: ``matrix`` is called from ``asyncio.to_thread`` in several threads.

    Args:
        features: The online-features API; its ``store`` is read (one client, shared).
        ttl_s: How long an item document is reused (``serving.feature_cache_ttl_s``);
            0 turns the cache off; above ``MAX_STALENESS_S`` it is capped (with a warning).
        retry_s: After a failed read, how long defaults are served without trying.
        max_entries: Item documents cached at most (least recently used go first).
        clock: Monotonic clock in seconds (cache ages and the breaker).

    Attributes:
        cache: The item documents (``len(cache)``: how many are held).
        hits: Item documents served from the cache since start.
        misses: Item documents read from the store since start.
        degraded: Answers built from defaults since start.
        max_age_s: The oldest cached document ever served, in seconds.
    """

    def __init__(
        self,
        features: OnlineFeatures,
        ttl_s: float,
        retry_s: float = 5.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s > MAX_STALENESS_S:
            logger.warning(
                "serving.feature_cache_ttl_s=%s s is above the %s s online features may be "
                "stale; caching item features for %s s",
                ttl_s,
                MAX_STALENESS_S,
                MAX_STALENESS_S,
            )
            ttl_s = MAX_STALENESS_S
        self.features = features
        self.retry_s = retry_s
        self.cache = EntityCache(ttl_s, max_entries, clock)
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.degraded = 0
        self.max_age_s = 0.0

    def clear(self) -> None:
        """Forget every cached document (the next requests read all items from the store)."""
        self.cache.clear()

    def matrix(
        self,
        spec: ModelFeatureSpec,
        project: str,
        user_id: str,
        candidates: Sequence[str],
        request: Mapping[str, RequestValue] | None = None,
        now_ms: float | None = None,
    ) -> FeatureRead:
        """The model's feature matrix for one user and its candidates, and how it was read.

        Args:
            spec: The model's feature spec (read as declared: group name and version).
            project: The project.
            user_id: The requesting user.
            candidates: Candidate item ids, one row each, in this order.
            request: Request-time feature values; missing ones take their default.
            now_ms: Request time (ms since the epoch) for recency features; now if None.

        Returns:
            The matrix (``OnlineFeatures.matrix_for_spec``'s layout), whether it holds
            defaults, and the request's cache hits, misses and oldest cached age.

        Raises:
            ValueError: Bad ids, an offline-only group or an unknown request feature
                (the caller's mistake; never turned into defaults).
        """
        check_matrix_request(spec, user_id, candidates)
        n = len(candidates)
        if n == 0:
            return FeatureRead(np.empty((0, len(spec.columns())), dtype=np.float32))
        now = self._clock()
        if now < self._down_until:
            return self._defaults(spec, n, request, now_ms)
        plans = [self._plan(project, group, user_id, candidates, now) for group in spec.groups]
        reads = [p.read for p in plans if p.read.ids]
        try:
            answers = iter(self.features.store.get_groups(reads) if reads else [])
        except OnlineStoreError as exc:
            self._down_until = self._clock() + self.retry_s
            logger.warning(
                "online store unreadable (%s); serving feature defaults for %.0f s",
                exc,
                self.retry_s,
            )
            return self._defaults(spec, n, request, now_ms)
        group_docs: list[list[Doc]] = []
        hits = misses = 0
        for plan in plans:
            answer = next(answers) if plan.read.ids else {}
            if plan.space is not None:
                self.cache.store(plan.space, plan.read.ids, answer, read_at=now)
                hits += len(plan.cached)
                misses += len(plan.read.ids)
            known = plan.cached | answer if plan.cached else answer
            group_docs.append([known.get(i) for i in plan.ids])
        oldest = max(p.oldest_age_s for p in plans if p.cached) if hits else None
        matrix = assemble_matrix(spec, group_docs, n, request, now_ms)
        with self._lock:
            self.hits += hits
            self.misses += misses
            if oldest is not None:
                self.max_age_s = max(self.max_age_s, oldest)
        return FeatureRead(matrix, False, hits, misses, oldest)

    def _plan(
        self,
        project: str,
        group: FeatureGroup,
        user_id: str,
        candidates: Sequence[str],
        now: float,
    ) -> _GroupPlan:
        """What one group needs: item groups consult the cache, the others read fresh."""
        collection, fields = online_source(project, group)
        ids = read_ids(group, user_id, candidates)
        if group.entity != "item" or not self.cache.enabled:
            return _GroupPlan(ids, Read(collection, list(dict.fromkeys(ids)), fields))
        space = namespace(collection, fields)
        lookup = self.cache.lookup(space, ids, now)
        return _GroupPlan(
            ids, Read(collection, lookup.missing, fields), space, lookup.found, lookup.oldest_age_s
        )

    def _defaults(
        self,
        spec: ModelFeatureSpec,
        n_rows: int,
        request: Mapping[str, RequestValue] | None,
        now_ms: float | None,
    ) -> FeatureRead:
        matrix = assemble_matrix(spec, [[None] for _ in spec.groups], n_rows, request, now_ms)
        with self._lock:
            self.degraded += 1
        return FeatureRead(matrix, degraded=True)


def seen_mask(spec: ModelFeatureSpec, matrix: np.ndarray) -> np.ndarray:
    """Rows whose userxitem counters are above zero: items the user already interacted with.

    Args:
        spec: The model's spec; only its ``user_item`` groups count.
        matrix: The model's feature matrix (``spec.columns()`` order).

    Returns:
        A boolean array, one per row (all False if the model reads no userxitem group).
    """
    seen = np.zeros(matrix.shape[0], dtype=bool)
    col = 0
    for group in spec.groups:
        width = len(group.columns())
        if group.entity == "user_item":
            offset = col
            for f in group.column_features():
                names = (
                    [value_field(f.name, v) for v in f.values]
                    if isinstance(f, CounterFeature) and f.by
                    else [f.name]
                )
                if isinstance(f, CounterFeature):
                    block = matrix[:, offset : offset + len(names)]
                    seen |= (block > 0).any(axis=1)
                offset += len(names)
        col += width
    return seen
