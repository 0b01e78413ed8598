"""Alias → exact version, re-resolved from the registry at most every few seconds.

The ingress resolves ``name@alias`` once per TTL per key; moving an alias in MLflow
reaches every request within one TTL (hot swap is a re-resolve). If the registry is
unreachable when an entry expires, the last known version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mlflow.exceptions import MlflowException

from twotier.errors import TwotierError
from twotier.registry import ModelNotFound, ModelVersionRef

logger = logging.getLogger("ray.serve")

Resolver = Callable[[str, str], ModelVersionRef]
"""``(name, alias) -> ModelVersionRef``, blocking (an MLflow call)."""

# MLflow's answers for "no such registered model" and "no such alias on it".
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


class RegistryUnavailable(TwotierError):
    """The model registry could not be asked (network, server error)."""


def is_not_found(exc: ModelNotFound) -> bool:
    """Whether ``exc`` means the model or alias truly does not exist (vs. an unreachable server)."""
    cause = exc.__cause__
    if isinstance(cause, MlflowException):
        return cause.error_code in _NOT_FOUND_CODES
    return True


class AliasCache:
    """A TTL cache of ``(name, alias) → ModelVersionRef`` with one lookup in flight per key.

    Args:
        resolve: Blocking resolver (``twotier.registry.resolve`` bound to a tracking URI).
        ttl_s: How long a resolved version is used before asking the registry again.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self, resolve: Resolver, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolve = resolve
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[ModelVersionRef, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def get(self, name: str, alias: str) -> ModelVersionRef:
        """The version ``name@alias`` points at (at most ``ttl_s`` seconds old).

        Raises:
            ModelNotFound: The model or alias does not exist.
            RegistryUnavailable: The registry cannot be reached and nothing is cached.
        """
        key = (name, alias)
        fresh = self._fresh(key)
        if fresh is not None:
            return fresh
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            fresh = self._fresh(key)  # another request may have refreshed it meanwhile
            if fresh is not None:
                return fresh
            return await self._refresh(key)

    def _fresh(self, key: tuple[str, str]) -> ModelVersionRef | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[1] < self.ttl_s:
            return entry[0]
        return None

    async def _refresh(self, key: tuple[str, str]) -> ModelVersionRef:
        name, alias = key
        stale = self._entries.get(key)
        try:
            ref = await asyncio.to_thread(self._resolve, name, alias)
        except ModelNotFound as exc:
            if is_not_found(exc):
                self._entries.pop(key, None)
                raise
            return self._fallback(key, stale, exc)
        except Exception as exc:
            return self._fallback(key, stale, exc)
        if stale is None or stale[0].version != ref.version:
            was = f" (was {stale[0].version})" if stale else ""
            logger.info("alias %s@%s -> version %s%s", name, alias, ref.version, was)
        self._entries[key] = (ref, self._clock())
        return ref

    def _fallback(
        self,
        key: tuple[str, str],
        stale: tuple[ModelVersionRef, float] | None,
        exc: Exception,
    ) -> ModelVersionRef:
        name, alias = key
        if stale is None:
            raise RegistryUnavailable(
                f"cannot resolve {name}@{alias}: the model registry is unavailable ({exc}). "
                "Fix: check that the MLflow server at the configured tracking_uri is running"
            ) from exc
        logger.warning(
            "cannot re-resolve %s@%s (%s); serving version %s for another %.0f s",
            name,
            alias,
            exc,
            stale[0].version,
            self.ttl_s,
        )
        self._entries[key] = (stale[0], self._clock())  # retry once per TTL, not per request
        return stale[0]
