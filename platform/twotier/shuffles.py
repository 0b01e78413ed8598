"""Closing an experiment's loop: start a new assignment generation once it concluded.

A shuffle records the next generation twice: in the offline cohort history (so training
sets label each event with the generation that held at its time) and in the online store
(so serving, which cannot reach the offline store, switches within its cache TTL). The
generation in force is the higher of the configured ``shuffle`` and the latest recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twotier.errors import TwotierError
from twotier.experiments import (
    Experiment,
    generation_in_force,
    in_force,
    record_shuffle,
    shuffle_history,
    utc_time,
)

if TYPE_CHECKING:
    from twotier.config import Settings
    from twotier.offline_store.base import OfflineStore
    from twotier.online_store import OnlineStore


class ShuffleRefused(TwotierError):
    """The experiment has not concluded and the shuffle was not forced."""


@dataclass(frozen=True)
class ShuffleResult:
    """What a shuffle did.

    Attributes:
        project: The project.
        experiment: The experiment.
        previous: The generation in force before.
        shuffle: The generation in force from ``started_ts`` on.
        started_ts: When the new generation started (ms).
        reason: Why it was allowed (the readout's conclusion, or ``forced``).
    """

    project: str
    experiment: str
    previous: int
    shuffle: int
    started_ts: int
    reason: str

    @property
    def summary(self) -> str:
        """``<experiment>: shuffle <previous> -> <shuffle> from <UTC time> (<reason>)``."""
        return (
            f"{self.experiment}: shuffle {self.previous} -> {self.shuffle} from "
            f"{utc_time(self.started_ts)} ({self.reason})"
        )


def shuffle_with_stores(
    offline: OfflineStore,
    online: OnlineStore,
    project: str,
    experiment: Experiment,
    *,
    now_ms: int | None = None,
    force: bool = False,
) -> ShuffleResult:
    """``shuffle_experiment`` on open stores (the Dagster job passes its resources').

    Retry-safe: the offline history is written first, so when the online write failed a
    second call finishes that generation (same number and start) instead of another.

    Raises:
        ShuffleRefused: The experiment has not concluded and ``force`` is False.
    """
    from twotier.readout import conclusion

    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    history = shuffle_history(offline, project, experiment.name)
    previous = generation_in_force(history, experiment)
    serving = in_force(experiment, online.experiment_generation(project, experiment.name))
    if previous > serving:
        # An earlier shuffle recorded its generation offline, then the online write
        # failed: finish that one instead of starting another.
        started = int(history.loc[history["shuffle"] == previous, "started_ts"].min())
        online.put_experiment_generation(project, experiment.name, previous, started)
        return ShuffleResult(
            project,
            experiment.name,
            serving,
            previous,
            started,
            "finished an interrupted shuffle (recorded offline, not yet online)",
        )
    if force:
        reason = "forced"
    else:
        verdict = conclusion(offline, project, experiment, now_ms=now)
        if not verdict.concluded:
            raise ShuffleRefused(
                f"experiment {experiment.name!r} of project {project!r} has not concluded "
                f"({verdict.reason}); wait for it, or pass --force to shuffle anyway"
            )
        reason = verdict.reason
    if history.empty:
        # the configured generation was never recorded: its cohorts held until now
        record_shuffle(offline, project, experiment, started_ts=0, shuffle=previous)
    new = previous + 1
    record_shuffle(offline, project, experiment, started_ts=now, shuffle=new)
    online.put_experiment_generation(project, experiment.name, new, now)
    return ShuffleResult(project, experiment.name, previous, new, now, reason)


def shuffle_experiment(
    settings: Settings,
    project: str,
    experiment_name: str,
    *,
    now_ms: int | None = None,
    force: bool = False,
) -> ShuffleResult:
    """Start the next assignment generation of ``experiment_name`` if it concluded.

    Args:
        settings: The settings (both stores).
        project: The project.
        experiment_name: The experiment.
        now_ms: The new generation's start (default: now).
        force: Shuffle even if the readout has not concluded.

    Raises:
        ReadoutError: The project has no such experiment.
        ShuffleRefused: The experiment has not concluded and ``force`` is False.
    """
    from twotier.offline_store import open_offline_store
    from twotier.online_store import connect
    from twotier.readout import experiment_of

    experiment = experiment_of(settings.project_features(project), project, experiment_name)
    with open_offline_store(settings) as offline, connect(settings) as online:
        return shuffle_with_stores(offline, online, project, experiment, now_ms=now_ms, force=force)


__all__ = ["ShuffleRefused", "ShuffleResult", "shuffle_experiment", "shuffle_with_stores"]
