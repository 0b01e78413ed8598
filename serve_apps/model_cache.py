"""Loaded models of one replica, bounded in bytes: the least recently used go first.

Ray Serve's ``@serve.multiplexed`` bounds a replica by a model *count*; models of one
platform differ in size by orders of magnitude (a 50 kB ranker, a 2 GB catalogue
embedding), so a replica here keeps models within a byte budget instead.

A model larger than the whole budget is still loaded (the request needs it) and pushes
every other model out; the next load evicts it in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger("ray.serve")

M = TypeVar("M")


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """A model and the bytes it is charged against the budget (its ONNX size)."""

    model: M
    nbytes: int


Loader = Callable[[str], Awaitable[Loaded[M]]]
"""``model_id -> Loaded``: fetches and opens one model (e.g. from the registry)."""


class ModelCache(Generic[M]):
    """An LRU cache of models keyed by ``name/version``, within ``budget_bytes``.

    One load per id is in flight at a time; concurrent requests for it wait for that
    load. Requests already holding an evicted model finish with it (it is only dropped
    from the cache, never closed under them).

    Args:
        load: Opens a model by id.
        budget_bytes: Bytes the cached models may add up to.
        on_evict: Called with ``(model_id, nbytes)`` after each eviction (metrics, logs).
    """

    def __init__(
        self,
        load: Loader[M],
        budget_bytes: int,
        on_evict: Callable[[str, int], None] | None = None,
    ) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes={budget_bytes}: the model memory budget must be > 0")
        self._load = load
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._models: OrderedDict[str, Loaded[M]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Loaded[M]]] = {}
        self.loads = 0
        self.evictions = 0

    @property
    def total_bytes(self) -> int:
        """Bytes of the models held now."""
        return sum(entry.nbytes for entry in self._models.values())

    def loaded(self) -> dict[str, int]:
        """``model_id -> nbytes`` of the models held now, least recently used first."""
        return {model_id: entry.nbytes for model_id, entry in self._models.items()}

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models

    async def get(self, model_id: str) -> M:
        """The model ``model_id``, loading it (and evicting others) if needed.

        Raises:
            Exception: Whatever the loader raised; nothing is cached then.
        """
        entry = self._models.get(model_id)
        if entry is not None:
            self._models.move_to_end(model_id)
            return entry.model
        pending = self._loading.get(model_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[model_id] = pending
            try:
                loaded = await self._load(model_id)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: no "never retrieved" warning without waiters
                raise
            finally:
                self._loading.pop(model_id, None)
            self.loads += 1
            self._admit(model_id, loaded)
            pending.set_result(loaded)
            return loaded.model
        return (await asyncio.shield(pending)).model

    def _admit(self, model_id: str, loaded: Loaded[M]) -> None:
        self._models[model_id] = loaded
        total = self.total_bytes
        while total > self.budget_bytes and len(self._models) > 1:
            victim, entry = self._models.popitem(last=False)
            total -= entry.nbytes
            self.evictions += 1
            logger.info(
                "evicted %s (%d bytes) to fit %s in the %d-byte model budget",
                victim,
                entry.nbytes,
                model_id,
                self.budget_bytes,
            )
            if self._on_evict is not None:
                self._on_evict(victim, entry.nbytes)
        if loaded.nbytes > self.budget_bytes:
            logger.warning(
                "%s takes %d bytes, more than the whole model budget (%d bytes) of this "
                "replica; raise serving.model_memory_budget_bytes",
                model_id,
                loaded.nbytes,
                self.budget_bytes,
            )
