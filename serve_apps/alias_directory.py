"""Alias → version for the whole application, and who has caught up with it.

One ``AliasDirectory`` (inside the ``ModelDirectory`` deployment) resolves ``name@alias``
from the MLflow registry, re-reads every known alias each ``alias_poll_s`` (moves made
in the MLflow UI), and moves aliases for the admin endpoint. Each change bumps a
**generation**. Every ingress and model-host replica long-polls the directory with the
generation it has applied, so a move reaches all of them within milliseconds, and the
admin endpoint can wait until every live replica has acknowledged it (hot swap).

This module is plain Python (no Ray) so the bookkeeping is unit-tested alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException

from twotier.errors import TwotierError
from twotier.registry import ModelNotFound, ModelVersionRef

logger = logging.getLogger("ray.serve")

# MLflow's answers for "no such registered model / alias / version".
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}

Key = tuple[str, str]
"""``(registered model name, alias)``."""


class RegistryUnavailable(TwotierError):
    """The model registry could not be asked (network, server error)."""


def is_not_found(exc: ModelNotFound) -> bool:
    """Whether ``exc`` means the model/alias/version truly does not exist (vs. an outage)."""
    cause = exc.__cause__
    if isinstance(cause, MlflowException):
        return cause.error_code in _NOT_FOUND_CODES
    return True


@dataclass
class ReplicaState:
    """What one replica last told the directory."""

    role: str
    generation: int
    last_seen: float
    loaded: dict[str, int] = field(default_factory=dict)


class AliasDirectory:
    """The alias table, its generation and the replicas' acknowledgements.

    Args:
        live_s: A replica that has not called ``sync`` for this long is considered gone
            (its acknowledgement is no longer awaited).
        clock: Monotonic clock in seconds.
    """

    def __init__(self, live_s: float = 6.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.entries: dict[Key, ModelVersionRef] = {}
        self.changed_at: dict[Key, int] = {}
        """The generation at which each entry last changed."""
        self.generation = 0
        self.replicas: dict[str, ReplicaState] = {}
        self.live_s = live_s
        self._clock = clock
        self._changed = asyncio.Event()

    # -- the table -----------------------------------------------------------

    def set(self, name: str, alias: str, ref: ModelVersionRef) -> bool:
        """Record ``name@alias → ref``; bump the generation if it changed.

        Returns:
            True if the table changed.
        """
        old = self.entries.get((name, alias))
        if old is not None and old.version == ref.version:
            return False
        self.entries[name, alias] = ref
        self._bump()
        self.changed_at[name, alias] = self.generation
        was = f" (was {old.version})" if old else ""
        logger.info("alias %s@%s -> version %s%s", name, alias, ref.version, was)
        return True

    def drop(self, name: str, alias: str) -> bool:
        """Forget ``name@alias`` (the alias was deleted); True if it was known."""
        if self.entries.pop((name, alias), None) is None:
            return False
        self.changed_at.pop((name, alias), None)
        self._bump()
        logger.info("alias %s@%s no longer exists", name, alias)
        return True

    def moved_since(self, key: Key, generation: int) -> bool:
        """Whether ``key`` changed after ``generation``."""
        return self.changed_at.get(key, 0) > generation

    def changes(
        self, registered: dict[str, dict[str, str]], since: int
    ) -> tuple[list[Key], list[tuple[Key, str]]]:
        """What a registry read begun at generation ``since`` says has changed.

        An entry set after ``since`` (an admin move made while the read was in flight) is
        newer than the read and is left alone: a slow poll never reverts a move.

        Args:
            registered: ``name -> {alias: version}`` as read from the registry.
            since: The generation when the read began.

        Returns:
            The aliases that no longer exist, and ``(key, version)`` of those that moved.
        """
        gone: list[Key] = []
        moved: list[tuple[Key, str]] = []
        for key, ref in self.entries.items():
            if self.moved_since(key, since):
                continue
            version = registered.get(key[0], {}).get(key[1])
            if version is None:
                gone.append(key)
            elif version != ref.version:
                moved.append((key, version))
        return gone, moved

    def _bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def table(self) -> dict[str, ModelVersionRef]:
        """``"name@alias" -> ref`` of every known alias."""
        return {f"{n}@{a}": ref for (n, a), ref in self.entries.items()}

    # -- replicas ------------------------------------------------------------

    async def wait_change(self, seen_generation: int, timeout_s: float) -> None:
        """Return once the generation differs from ``seen_generation``, or after the timeout."""
        if self.generation != seen_generation:
            return
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            return

    def ack(self, replica: str, role: str, generation: int, loaded: dict[str, int]) -> None:
        """``replica`` (an ingress or a model host) has applied ``generation``."""
        self.replicas[replica] = ReplicaState(role, generation, self._clock(), dict(loaded))

    def live(self) -> dict[str, ReplicaState]:
        """Replicas heard from within ``live_s``."""
        now = self._clock()
        return {r: s for r, s in self.replicas.items() if now - s.last_seen <= self.live_s}

    def pending(self, generation: int) -> list[str]:
        """Live replicas that have not yet applied ``generation``."""
        return sorted(r for r, s in self.live().items() if s.generation < generation)

    def forget_gone(self) -> None:
        """Drop replicas not heard from for a long time (3 x ``live_s``)."""
        now = self._clock()
        for replica in [r for r, s in self.replicas.items() if now - s.last_seen > 3 * self.live_s]:
            del self.replicas[replica]

    def wanted(self, loaded: Iterable[str], since_generation: int) -> list[str]:
        """Model ids a host should preload after ``since_generation``.

        The new version of every alias that moved since then, for the models the host
        holds some version of (it served them, so it will be asked for them again).
        """
        ids = set(loaded)
        held = {model_id.rpartition("/")[0] for model_id in ids}
        return sorted(
            {
                ref.model_id
                for key, ref in self.entries.items()
                if key[0] in held and self.moved_since(key, since_generation)
            }
            - ids
        )
