"""A/B experiments: deterministic assignment shared by training and serving, with history.

A user's group is a pure function of (project, experiment, salt, shuffle generation,
user id): a 64-bit BLAKE2b hash mapped to [0, 1) and cut by the groups' cumulative shares.
No state is needed to answer, so every process and every replica agrees.

A **reshuffle** starts a new generation (new cohorts). Each generation's start time is
recorded in the offline store (``<project>__experiment_shuffles``), so a training set can
assign each event with the generation that held when the event happened.

Example:
    >>> exp = Experiment(name="ranker_ab", salt="s1", groups=[
    ...     ExperimentGroup(name="control", share=0.5, alias="champion"),
    ...     ExperimentGroup(name="treatment", share=0.5, alias="challenger")])
    >>> assign("movielens", exp, "42") in {"control", "treatment"}
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import pandas as pd

    from twotier.offline_store.base import OfflineStore

NAME = r"^[a-z][a-z0-9_]{0,62}$"
SHUFFLES_TABLE = "experiment_shuffles"


class ExperimentGroup(BaseModel):
    """One arm of an experiment: its traffic share and the model alias it is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    share: float = Field(gt=0, le=1)
    alias: str = Field(min_length=1)


class ExperimentReadout(BaseModel):
    """How an experiment's outcomes are counted and judged (``twotier.readout``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hit_actions: tuple[str, ...] = Field(("view", "smile"), min_length=1)
    """A recommended item the user acts on with one of these, within the window, is a hit."""
    smile_action: str = Field("smile", min_length=1)
    """A hit that includes this action is a smiled hit (the smile rate of hits)."""
    window_s: int = Field(86_400, ge=1, le=30 * 86_400)
    """Seconds after a recommendation in which the user's action counts as its hit."""
    control: str | None = None
    """The group the others are compared with; default: the group served ``champion``,
    else the first group."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Significance level: a p-value below it is significant; intervals are 1 - alpha."""
    min_users: int = Field(100, ge=2)
    """Users needed in every group before the readout may decide."""
    max_days: int = Field(14, ge=1)
    """An experiment concludes after this many days of its generation, significant or not."""


class Experiment(BaseModel):
    """An A/B experiment of a project, declared in configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    salt: str = Field(min_length=1)
    shuffle: int = Field(1, ge=1)
    """The current shuffle generation; raising it reshuffles every user."""
    groups: tuple[ExperimentGroup, ...] = Field(min_length=1)
    readout: ExperimentReadout = ExperimentReadout()
    """How outcomes are attributed to its recommendations and how groups are compared."""

    @model_validator(mode="after")
    def _shares(self) -> Experiment:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: group names repeat: {names}")
        total = math.fsum(g.share for g in self.groups)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"experiment {self.name!r}: group shares add up to {total:g}, they must add up to 1"
            )
        control = self.readout.control
        if control is not None and control not in names:
            raise ValueError(
                f"experiment {self.name!r}: readout.control {control!r} is not a group "
                f"(groups: {names})"
            )
        return self

    @property
    def control(self) -> str:
        """The group the others are compared with in the readout."""
        if self.readout.control is not None:
            return self.readout.control
        champion = [g.name for g in self.groups if g.alias == "champion"]
        return champion[0] if champion else self.groups[0].name

    def group(self, name: str) -> ExperimentGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"experiment {self.name!r} has no group {name!r}")


def _bucket(project: str, experiment: Experiment, shuffle: int, user_id: str) -> float:
    key = "\x1f".join((project, experiment.name, experiment.salt, str(shuffle), user_id))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _cuts(experiment: Experiment) -> list[float]:
    cuts: list[float] = []
    running = 0.0
    for g in experiment.groups[:-1]:
        running += g.share
        cuts.append(running)
    return cuts


def assign(project: str, experiment: Experiment, user_id: str, shuffle: int | None = None) -> str:
    """The group of ``user_id`` in ``experiment`` under a shuffle generation.

    Args:
        project: The project (part of the hash, so projects never share cohorts).
        experiment: The experiment.
        user_id: The user.
        shuffle: The generation; defaults to the experiment's current ``shuffle``.

    Returns:
        The group name.
    """
    generation = experiment.shuffle if shuffle is None else shuffle
    index = bisect_right(_cuts(experiment), _bucket(project, experiment, generation, user_id))
    return experiment.groups[index].name


def assign_many(
    project: str,
    experiment: Experiment,
    user_ids: Sequence[str],
    shuffles: Sequence[int] | int | None = None,
) -> list[str]:
    """``assign`` for many users, each under its own generation (or one for all)."""
    if shuffles is None or isinstance(shuffles, int):
        return [assign(project, experiment, u, shuffles) for u in user_ids]
    return [assign(project, experiment, u, s) for u, s in zip(user_ids, shuffles, strict=True)]


# -- cohort history in the offline store ----------------------------------------------


def _table(store: OfflineStore, project: str) -> str:
    return store.table(project, SHUFFLES_TABLE)


def ensure_history(store: OfflineStore, project: str) -> None:
    """Create the shuffle history table of ``project`` (and its database) if missing."""
    store.ensure_tables(project)
    store.command(
        f"""
        CREATE TABLE IF NOT EXISTS {_table(store, project)} (
            experiment String, shuffle UInt32, started_ts Int64, salt String, groups String
        ) ENGINE = ReplacingMergeTree ORDER BY (experiment, shuffle)
        """
    )


def record_shuffle(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    started_ts: int,
    shuffle: int | None = None,
) -> bool:
    """Record that generation ``shuffle`` (default ``experiment.shuffle``) started at
    ``started_ts`` (ms); idempotent.

    A generation older than a recorded one is not recorded: the recorded history wins
    (``twotier experiments shuffle`` moves past the configured ``shuffle``).

    Returns:
        True if the generation was new, False if it was already recorded (the first
        recorded start time is kept) or a later generation is recorded.
    """
    generation = experiment.shuffle if shuffle is None else shuffle
    ensure_history(store, project)
    history = shuffle_history(store, project, experiment.name)
    if not history.empty and generation <= int(history["shuffle"].max()):
        return False
    groups = json.dumps([g.model_dump() for g in experiment.groups])
    store.command(
        f"INSERT INTO {_table(store, project)} VALUES (%(e)s, %(s)s, %(t)s, %(salt)s, %(g)s)",
        {
            "e": experiment.name,
            "s": generation,
            "t": started_ts,
            "salt": experiment.salt,
            "g": groups,
        },
    )
    return True


def in_force(experiment: Experiment, recorded: int | None) -> int:
    """The generation assigned with: the configured ``shuffle``, or a later ``recorded`` one
    (``twotier experiments shuffle`` moves past the configuration; a configuration behind
    the record does not move it back)."""
    return max(experiment.shuffle, recorded or 0)


def generation_in_force(history: pd.DataFrame, experiment: Experiment) -> int:
    """``in_force`` with the latest generation of ``shuffle_history`` rows."""
    return in_force(experiment, None if history.empty else int(history["shuffle"].max()))


def shuffle_history(store: OfflineStore, project: str, experiment: str) -> pd.DataFrame:
    """Recorded generations of ``experiment``: columns ``shuffle, started_ts``, by time."""
    import pandas as pd

    ensure_history(store, project)
    frame = store.query_df(
        f"SELECT shuffle, started_ts FROM {_table(store, project)} FINAL "
        "WHERE experiment = %(e)s ORDER BY started_ts, shuffle",
        {"e": experiment},
    )
    if frame.empty:  # an empty result carries no columns
        return pd.DataFrame(
            {"shuffle": pd.Series(dtype="int64"), "started_ts": pd.Series(dtype="int64")}
        )
    return frame.astype({"shuffle": "int64", "started_ts": "int64"})


def utc_time(ts_ms: int) -> str:
    """A generation's start (ms) as people read it: ``YYYY-MM-DD HH:MM:SS UTC``."""
    return f"{dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def shuffles_at(history: pd.DataFrame, ts: Iterable[int], first: int = 1) -> list[int]:
    """The generation in force at each time ``ts`` (ms), given ``shuffle_history`` rows.

    Times before the first recorded start get ``first``.
    """
    starts = history["started_ts"].to_numpy(dtype=np.int64)
    gens = history["shuffle"].to_numpy(dtype=np.int64)
    times = np.fromiter(ts, dtype=np.int64)
    index = np.searchsorted(starts, times, side="right") - 1
    return [int(gens[i]) if i >= 0 else first for i in index]


def groups_at(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    user_ids: Sequence[str],
    ts: Sequence[int],
) -> list[str]:
    """The group each (user, time) was in, under the generation that held at that time."""
    history = shuffle_history(store, project, experiment.name)
    return assign_many(project, experiment, user_ids, shuffles_at(history, ts))


__all__ = [
    "Experiment",
    "ExperimentGroup",
    "ExperimentReadout",
    "assign",
    "assign_many",
    "generation_in_force",
    "groups_at",
    "in_force",
    "record_shuffle",
    "shuffle_history",
    "shuffles_at",
    "utc_time",
]
