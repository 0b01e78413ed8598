"""Which experiment group a request belongs to and which alias each tier is served.

The group comes from ``twotier.experiments.assign`` (the function training uses too), so
the cohort a user was trained in is the cohort it is served in. Debug overrides in the
request may name another experiment, force a group, or force an alias.

The generation assigned with is the configured ``shuffle`` or, after ``twotier experiments
shuffle``, the later one it wrote to the online store (``Generations``, cached briefly), so
serving switches cohorts without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twotier.experiments import Experiment, assign, in_force
from twotier.features.spec import ProjectFeatures

if TYPE_CHECKING:
    from twotier.online_store import OnlineStore

logger = logging.getLogger(__name__)

CHAMPION = "champion"
TIER_ONE_MODEL = "candidates"


class RouteNotFound(LookupError):
    """An experiment, group or model named in a request does not exist; 404."""


@dataclass(frozen=True)
class Route:
    """The experiment group of one request and the alias both tiers are asked for.

    Attributes:
        experiment: The experiment name, or None if the project runs none.
        group: The user's group (assigned or forced), or None.
        alias: The alias to serve (the group's, an override, or ``champion``).
        explicit_alias: The alias was forced in the request: no fallback to champion.
        shuffle: The generation the group was assigned under (0 without an experiment).
    """

    experiment: str | None
    group: str | None
    alias: str
    explicit_alias: bool = False
    shuffle: int = 0


class Generations:
    """The generation in force per experiment, as the online store records it, refreshed
    every ``ttl_s`` seconds; the configured ``shuffle`` when the store has none (or a lower
    one) or cannot be read.

    Only an experiment's first read waits for the store. After it, a stale value is
    served while a background thread reads the new one, so requests never wait on the
    store (nor on its timeouts while it is down).
    """

    def __init__(self, store: OnlineStore | None, ttl_s: float = 1.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def get(self, project: str, experiment: Experiment) -> int:
        """The generation ``experiment`` of ``project`` assigns with now."""
        if self.store is None:
            return experiment.shuffle
        key = (project, experiment.name)
        with self._lock:
            cached = self._cache.get(key)
            refresh = (
                cached is not None
                and time.monotonic() - cached[0] >= self.ttl_s
                and key not in self._refreshing
            )
            if refresh:
                self._refreshing.add(key)
        if cached is None:
            return in_force(experiment, self._read(key, None))
        if refresh:
            threading.Thread(
                target=self._read,
                args=(key, cached[1]),
                name=f"twotier-generations {project}/{experiment.name}",
                daemon=True,
            ).start()
        return in_force(experiment, cached[1])

    def _read(self, key: tuple[str, str], last: int | None) -> int | None:
        assert self.store is not None
        try:
            recorded = self.store.experiment_generation(*key)
        except Exception as exc:  # a dead store must not fail requests: keep the last
            logger.warning("experiment %s/%s: generation unreadable (%s)", *key, exc)
            recorded = last
        with self._lock:
            self._cache[key] = (time.monotonic(), recorded)
            self._refreshing.discard(key)
        return recorded


def route(
    project: str,
    features: ProjectFeatures,
    user_id: str,
    experiment: str | None = None,
    group: str | None = None,
    alias: str | None = None,
    generations: Generations | None = None,
) -> Route:
    """The route of one request.

    Args:
        project: The project (part of the assignment hash).
        features: The project's declaration (its experiments).
        user_id: The user.
        experiment: Override: the experiment to assign in (default: the project's first).
        group: Override: the group to serve, skipping the assignment.
        alias: Override: the alias to serve both tiers, skipping the group's.
        generations: Where the generation in force is read (default: the configured one).

    Raises:
        RouteNotFound: The experiment or group does not exist.
    """
    chosen: Experiment | None = None
    if experiment is not None:
        chosen = next((e for e in features.experiments if e.name == experiment), None)
        if chosen is None:
            raise RouteNotFound(
                f"project {project!r} has no experiment {experiment!r} "
                f"(declared: {[e.name for e in features.experiments]})"
            )
    elif features.experiments:
        chosen = features.experiments[0]
    if chosen is None:
        if group is not None:
            raise RouteNotFound(
                f"project {project!r} runs no experiment, so there is no group {group!r}; "
                "declare one under projects.<name>.experiments"
            )
        return Route(None, None, alias or CHAMPION, alias is not None)
    shuffle = generations.get(project, chosen) if generations else chosen.shuffle
    if group is None:
        group = assign(project, chosen, user_id, shuffle)
    elif group not in {g.name for g in chosen.groups}:
        raise RouteNotFound(
            f"experiment {chosen.name!r} of project {project!r} has no group {group!r} "
            f"(groups: {[g.name for g in chosen.groups]})"
        )
    served = alias or chosen.group(group).alias
    return Route(chosen.name, group, served, alias is not None, shuffle)


def tier_two_model(project: str, features: ProjectFeatures, model: str | None) -> str:
    """The tier-two model to serve: ``model`` if declared, else the project's first one.

    Raises:
        RouteNotFound: The model is not a tier-two model of the project, or it has none.
    """
    declared = [m.name for m in features.models if m.tier == "tier2"]
    if model is None:
        if not declared:
            raise RouteNotFound(f"project {project!r} declares no tier-two model")
        return declared[0]
    if model not in declared:
        raise RouteNotFound(
            f"project {project!r} has no tier-two model {model!r} (declared: {declared})"
        )
    return model


def check_model(project: str, features: ProjectFeatures, tier: str, model: str) -> None:
    """Raise ``RouteNotFound`` unless ``<project>.<tier>.<model>`` is a model of the project."""
    if tier == "tier1":
        if model != TIER_ONE_MODEL:
            raise RouteNotFound(
                f"project {project!r} has one tier-one model, {TIER_ONE_MODEL!r}, not {model!r}"
            )
        return
    if tier == "tier2":
        tier_two_model(project, features, model)
        return
    raise RouteNotFound(f"unknown tier {tier!r}: use tier1 or tier2")
