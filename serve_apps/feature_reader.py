"""Online features for tier two: ``OnlineFeatures.matrix_for_spec`` behind a short TTL cache.

When the online store cannot be read, the matrix is built from the features' defaults
(``assemble_matrix`` with unknown entities), the answer is flagged as degraded, and the
store is left alone for ``retry_s`` seconds, so an outage costs one slow read per
window instead of one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from twotier.features.online import OnlineFeatures, assemble_matrix
from twotier.features.spec import CounterFeature, ModelFeatureSpec
from twotier.online_store import OnlineStoreError

logger = logging.getLogger("ray.serve")

MatrixKey = tuple[str, str, str, tuple[str, ...], tuple[tuple[str, float], ...]]


class FeatureReader:
    """Reads feature matrices for one replica, with a TTL cache and an outage breaker.

    Args:
        features: The online-features API (one store client, shared by threads).
        ttl_s: How long a matrix read for (model, user, candidates) is reused; 0 = never.
        retry_s: After a failed read, how long defaults are served without trying.
        max_entries: Matrices kept at most (oldest go first).
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        features: OnlineFeatures,
        ttl_s: float,
        retry_s: float = 5.0,
        max_entries: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.features = features
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[MatrixKey, tuple[np.ndarray, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._down_until = 0.0
        self.hits = 0
        self.misses = 0
        self.degraded = 0

    def matrix(
        self,
        spec: ModelFeatureSpec,
        project: str,
        user_id: str,
        candidates: Sequence[str],
        request: Mapping[str, float] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """The model's feature matrix and whether it holds defaults (store unreachable).

        Raises:
            ValueError: Bad ids or an unknown request feature (the caller's mistake).
        """
        request = dict(request or {})
        key: MatrixKey = (
            project,
            spec.model.name,
            "|".join(g.key for g in spec.groups),
            (user_id, *candidates),
            tuple(sorted(request.items())),
        )
        now = self._clock()
        if self.ttl_s > 0:
            with self._lock:
                cached = self._cache.get(key)
                if cached is not None and now - cached[1] < self.ttl_s:
                    self.hits += 1
                    return cached[0], False
        self.misses += 1
        if now < self._down_until:
            return self._defaults(spec, len(candidates), request), True
        try:
            matrix = self.features.matrix_for_spec(spec, project, user_id, candidates, request)
        except OnlineStoreError as exc:
            self._down_until = self._clock() + self.retry_s
            logger.warning(
                "online store unreadable (%s); serving feature defaults for %.0f s",
                exc,
                self.retry_s,
            )
            return self._defaults(spec, len(candidates), request), True
        if self.ttl_s > 0:
            with self._lock:
                self._cache[key] = (matrix, now)
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return matrix, False

    def _defaults(
        self, spec: ModelFeatureSpec, n_rows: int, request: Mapping[str, float]
    ) -> np.ndarray:
        self.degraded += 1
        return assemble_matrix(spec, [[None] for _ in spec.groups], n_rows, request)


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
            for f in group.features:
                names = (
                    [f"{f.name}__{v}" for v in f.values]
                    if isinstance(f, CounterFeature) and f.by
                    else [f.name]
                )
                if isinstance(f, CounterFeature):
                    block = matrix[:, offset : offset + len(names)]
                    seen |= (block > 0).any(axis=1)
                offset += len(names)
        col += width
    return seen
