"""What each A/B group's recommendations led to: attribution, the per-group readout, the verdict.

**Attribution** joins the recommendation log (one ``recommendation`` event per served item,
logged by serving) with the user's later events in the offline store. Each view or smile
(``readout.hit_actions``) is credited to the *latest* recommendation of that item to that
user strictly before it (ClickHouse ``ASOF JOIN ... e.ts > r.ts``), if it came within
``readout.window_s``. So an event before a recommendation never counts, an event counts
once however often the item was recommended, and a recommendation is one hit however
often the user views it. Events are read ``FINAL`` (one row per ``event_id``) and each
serve day's rows replace that day's partition, so a replayed event or a re-run changes
nothing: attribution is exactly once.

The result is the table ``<project>__recommendation_outcomes``: one row per served item
with its request, user, experiment, group, shuffle generation, both model versions, rank,
time, ``hit``, ``smiled`` and the first hit's time.

**The readout** of an experiment's current generation compares every group with control
per metric (``twotier.experiment_stats``): users, recommendations, hit rate per
recommendation, share of users with a hit, smile rate of hits. Requests that forced a
group, an experiment or an alias are left out: they were not randomised.

**The verdict** (``conclusion``): an experiment concludes when its primary metric (hit
rate per recommendation) differs significantly with every group past ``readout.min_users``,
or after ``readout.max_days`` of its generation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from twotier.experiment_stats import Difference, ratio_difference, ratio_interval, two_proportions
from twotier.experiments import Experiment, shuffle_history

if TYPE_CHECKING:
    from twotier.features.spec import ProjectFeatures
    from twotier.offline_store.base import OfflineStore

OUTCOMES_TABLE = "recommendation_outcomes"
READOUT_TABLE = "experiment_readout"
DAY_MS = 86_400_000
PRIMARY = "hit_rate"
METRICS = ("hit_rate", "user_hit_rate", "smile_rate")
"""Metric keys: hits per recommendation, share of users with a hit, smiled share of hits."""
METRIC_LABELS = {
    "hit_rate": "hits per recommendation",
    "user_hit_rate": "users with a hit",
    "smile_rate": "smiles per hit",
}

_OUTCOMES_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    rec_id String COMMENT 'event_id of the recommendation event',
    request_id String,
    user_id String,
    item_id String,
    rank UInt16,
    rec_ts Int64 COMMENT 'serve time (ms)',
    experiment String,
    `group` String,
    shuffle UInt32 COMMENT '0: not logged (served before generations were logged)',
    forced UInt8 COMMENT '1: the request forced its group, experiment or alias',
    tier1_model String,
    tier2_model String,
    hit UInt8,
    smiled UInt8,
    first_hit_ts Int64 COMMENT '0 without a hit',
    window_s UInt32,
    partition String COMMENT 'serve day, YYYY-MM-DD (UTC)'
) ENGINE = ReplacingMergeTree
PARTITION BY partition
ORDER BY (experiment, user_id, rec_ts, rec_id)
COMMENT 'twotier: each served item and whether the user acted on it within the window'
"""

_READOUT_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    partition String COMMENT 'day, YYYY-MM-DD (UTC)',
    experiment String,
    shuffle UInt32,
    scope LowCardinality(String) COMMENT 'day, or cumulative (generation start to day end)',
    `group` String,
    is_control UInt8,
    metric LowCardinality(String),
    users UInt64,
    recommendations UInt64,
    value Float64,
    control_value Float64,
    difference Float64,
    low Float64,
    high Float64,
    p_value Float64,
    computed_ms Int64
) ENGINE = ReplacingMergeTree
PARTITION BY partition
ORDER BY (partition, experiment, shuffle, scope, `group`, metric)
COMMENT 'twotier: per-group experiment metrics against control, by day'
"""


class ReadoutError(ValueError):
    """A readout was asked of something that does not exist (experiment, project)."""


def day_key(ts_ms: int) -> str:
    """The UTC day (``YYYY-MM-DD``) of a time in ms."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def day_start_ms(key: str) -> int:
    """Midnight UTC of day ``key`` (``YYYY-MM-DD``) in ms."""
    return int(datetime.strptime(key, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def _sql_list(values: Sequence[str]) -> str:
    return (
        "["
        + ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
        + "]"
    )


# -- attribution ------------------------------------------------------------------------


def ensure_outcomes(store: OfflineStore, project: str) -> str:
    """Create the outcomes table of ``project`` if missing; its qualified name."""
    store.ensure_tables(project)
    table = store.table(project, OUTCOMES_TABLE)
    store.command(_OUTCOMES_DDL.format(table=table))
    return table


def attribute(
    store: OfflineStore,
    project: str,
    features: ProjectFeatures,
    days: Sequence[str],
    now_ms: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Attribute the outcomes of the recommendations served on ``days``; replaces those days.

    Args:
        store: An open offline store holding the project's events.
        project: The project.
        features: Its declaration (the experiments' readout settings).
        days: Serve days (``YYYY-MM-DD``, UTC); contiguous or not.
        now_ms: The time the data is complete to, for ``complete`` (default: now).

    Returns:
        Per day: ``recommendations``, ``hits``, ``smiled`` and ``complete`` (whether its
        attribution window has closed, so a later run cannot add hits).
    """
    table = ensure_outcomes(store, project)
    events = store.table(project, "events")
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    readouts = {e.name: e.readout for e in features.experiments}
    # One window and set of actions per run: the experiments' widest and union.
    window_ms = max((r.window_s for r in readouts.values()), default=86_400) * 1000
    hit_actions = sorted({a for r in readouts.values() for a in r.hit_actions} or {"view", "smile"})
    smile_actions = sorted({r.smile_action for r in readouts.values()} or {"smile"})
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(days)):
        lo = day_start_ms(key)
        hi = lo + DAY_MS
        present = store.query_df(
            f"SELECT count() AS n FROM {table} WHERE partition = {{p:String}}", {"p": key}
        )
        if int(present["n"].iloc[0]):
            store.command(f"ALTER TABLE {table} DROP PARTITION {{p:String}}", {"p": key})
        store.command(
            _ATTRIBUTION_SQL.format(
                table=table,
                events=events,
                hit_actions=_sql_list(hit_actions),
                smile_actions=_sql_list(smile_actions),
            ),
            {"lo": lo, "hi": hi, "window": window_ms, "key": key},
        )
        counted = store.query_df(
            f"SELECT count() AS recommendations, sum(hit) AS hits, sum(smiled) AS smiled "
            f"FROM {table} WHERE partition = {{p:String}}",
            {"p": key},
        )
        row = counted.iloc[0]
        out[key] = {
            "recommendations": int(row["recommendations"]),
            "hits": int(row["hits"] or 0),
            "smiled": int(row["smiled"] or 0),
            "complete": now_ms >= hi + window_ms,
        }
    return out


# Recommendations that could claim an event of the day's window reach back one window,
# and forward one window past the day: a later recommendation of the same item takes the
# credit from an earlier one, even when it was served the next day.
_ATTRIBUTION_SQL = """
INSERT INTO {table}
WITH
recs AS (
    SELECT event_id AS rec_id, user_id, item_id, ts AS rec_ts,
           context['request_id'] AS request_id,
           toUInt16OrZero(context['rank']) AS rank,
           context['experiment'] AS experiment,
           context['group'] AS grp,
           toUInt32OrZero(context['shuffle']) AS shuffle,
           toUInt8(context['forced'] = '1') AS forced,
           context['tier1_model'] AS tier1_model,
           context['tier2_model'] AS tier2_model
    FROM {events} FINAL
    WHERE action = 'recommendation'
      AND ts >= {{lo:Int64}} - {{window:Int64}} AND ts < {{hi:Int64}} + {{window:Int64}}
),
outcome_events AS (
    SELECT user_id, item_id, ts, action
    FROM {events} FINAL
    WHERE action IN {hit_actions}
      AND ts > {{lo:Int64}} AND ts <= {{hi:Int64}} + {{window:Int64}}
),
claimed AS (
    SELECT r.rec_id AS rec_id, min(e.ts) AS first_hit_ts,
           max(e.action IN {smile_actions}) AS smiled
    FROM outcome_events AS e
    ASOF INNER JOIN recs AS r
      ON e.user_id = r.user_id AND e.item_id = r.item_id AND e.ts > r.rec_ts
    WHERE e.ts - r.rec_ts <= {{window:Int64}}
    GROUP BY r.rec_id
)
SELECT r.rec_id, r.request_id, r.user_id, r.item_id, r.rank, r.rec_ts, r.experiment,
       r.grp, r.shuffle, r.forced, r.tier1_model, r.tier2_model,
       toUInt8(c.rec_id != '') AS hit, toUInt8(c.smiled) AS smiled,
       c.first_hit_ts, toUInt32({{window:Int64}} / 1000), {{key:String}}
FROM recs AS r
LEFT JOIN claimed AS c ON r.rec_id = c.rec_id
WHERE r.rec_ts >= {{lo:Int64}} AND r.rec_ts < {{hi:Int64}}
SETTINGS join_use_nulls = 0
"""


# -- the readout ------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupReadout:
    """One group's outcomes and, for a non-control group, its differences from control."""

    group: str
    is_control: bool
    users: int
    recommendations: int
    hits: int
    smiled: int
    users_with_hit: int
    values: dict[str, float]
    differences: dict[str, Difference] = field(default_factory=dict)


@dataclass(frozen=True)
class Readout:
    """An experiment's per-group comparison over one period of one shuffle generation.

    Attributes:
        experiment: The experiment.
        shuffle: The generation read.
        control: The control group.
        since_ms: Start of the period (the generation's start, or the day's).
        until_ms: End of the period (exclusive).
        alpha: The significance level; intervals are ``1 - alpha``.
        min_users: Users every group needs before the readout decides.
        groups: Control first, then the others in declared order.
    """

    experiment: str
    shuffle: int
    control: str
    since_ms: int
    until_ms: int
    alpha: float
    min_users: int
    groups: list[GroupReadout]

    @property
    def too_small(self) -> list[str]:
        """Groups with fewer than ``min_users`` users."""
        return [g.group for g in self.groups if g.users < self.min_users]

    def significant(self, metric: str = PRIMARY) -> dict[str, Difference]:
        """Groups whose ``metric`` differs from control at ``alpha``."""
        return {
            g.group: g.differences[metric]
            for g in self.groups
            if metric in g.differences and g.differences[metric].significant(self.alpha)
        }

    def harmed(self, metric: str = PRIMARY) -> dict[str, Difference]:
        """Groups significantly *worse* than control on ``metric``."""
        return {g: d for g, d in self.significant(metric).items() if d.difference < 0}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per group and metric (for tables, JSON and the readout table)."""
        out = []
        for g in self.groups:
            for metric in METRICS:
                d = g.differences.get(metric)
                out.append(
                    {
                        "group": g.group,
                        "is_control": g.is_control,
                        "metric": metric,
                        "users": g.users,
                        "recommendations": g.recommendations,
                        "value": g.values[metric],
                        "control_value": d.control if d else g.values[metric],
                        "difference": d.difference if d else 0.0,
                        "low": d.low if d else math.nan,
                        "high": d.high if d else math.nan,
                        "p_value": d.p_value if d else math.nan,
                    }
                )
        return out


def current_generation(
    store: OfflineStore, project: str, experiment: Experiment
) -> tuple[int, int]:
    """``(shuffle, started_ms)`` of the experiment's latest recorded generation.

    An experiment whose generations were never recorded is in its configured one since 0.
    """
    history = shuffle_history(store, project, experiment.name)
    if history.empty:
        return experiment.shuffle, 0
    last = history.sort_values(["shuffle"]).iloc[-1]
    if int(last["shuffle"]) < experiment.shuffle:  # configured ahead of the history
        return experiment.shuffle, int(last["started_ts"])
    return int(last["shuffle"]), int(last["started_ts"])


def _generation_bounds(
    store: OfflineStore, project: str, experiment: Experiment, shuffle: int
) -> tuple[int, int]:
    """``[start, end)`` in ms of generation ``shuffle`` (end: the next one's start)."""
    history = shuffle_history(store, project, experiment.name)
    starts = dict(zip(history["shuffle"].tolist(), history["started_ts"].tolist(), strict=True))
    start = int(starts.get(shuffle, 0))
    later = [int(t) for s, t in starts.items() if s > shuffle]
    return start, min(later) if later else 2**62


def per_user(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    shuffle: int,
    since_ms: int,
    until_ms: int,
    by_day: bool = False,
) -> pd.DataFrame:
    """Per-user (and per-day) sums of one generation: ``group, user_id, recs, hits, smiled``.

    Rows logged without a generation (``shuffle`` 0) count in the one that held at their time.
    """
    table = ensure_outcomes(store, project)
    start, end = _generation_bounds(store, project, experiment, shuffle)
    day = "partition AS day, " if by_day else ""
    return store.query_df(
        f"""
        SELECT {day}`group`, user_id, count() AS recs, sum(hit) AS hits, sum(smiled) AS smiled
        FROM {table} FINAL
        WHERE experiment = {{e:String}} AND forced = 0
          AND (shuffle = {{s:UInt32}}
               OR (shuffle = 0 AND rec_ts >= {{start:Int64}} AND rec_ts < {{end:Int64}}))
          AND rec_ts >= {{since:Int64}} AND rec_ts < {{until:Int64}}
        GROUP BY {"day, " if by_day else ""}`group`, user_id
        """,
        {
            "e": experiment.name,
            "s": shuffle,
            "start": start,
            "end": end,
            "since": since_ms,
            "until": until_ms,
        },
    )


def compare(
    experiment: Experiment,
    users: pd.DataFrame,
    shuffle: int,
    since_ms: int,
    until_ms: int,
) -> Readout:
    """The readout of per-user sums (``per_user``'s frame) against the experiment's control."""
    alpha = experiment.readout.alpha
    control = experiment.control
    by_group = {str(g): frame for g, frame in users.groupby("group")} if len(users) else {}
    empty = pd.DataFrame({"recs": [], "hits": [], "smiled": []}, dtype="float64")
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for g in experiment.groups:
        frame = by_group.get(g.name, empty)
        arrays[g.name] = (
            frame["recs"].to_numpy(np.float64),
            frame["hits"].to_numpy(np.float64),
            frame["smiled"].to_numpy(np.float64),
        )
    rc, hc, sc = arrays[control]
    ordered = [control] + [g.name for g in experiment.groups if g.name != control]
    groups = []
    for name in ordered:
        recs, hits, smiled = arrays[name]
        n_users = len(recs)
        with_hit = int((hits > 0).sum())
        values = {
            "hit_rate": float(hits.sum() / recs.sum()) if recs.sum() else math.nan,
            "user_hit_rate": with_hit / n_users if n_users else math.nan,
            "smile_rate": float(smiled.sum() / hits.sum()) if hits.sum() else math.nan,
        }
        differences: dict[str, Difference] = {}
        if name != control:
            differences = {
                "hit_rate": ratio_difference(hits, recs, hc, rc, alpha),
                "user_hit_rate": two_proportions(
                    with_hit, n_users, int((hc > 0).sum()), len(rc), alpha
                ),
                "smile_rate": ratio_difference(smiled, hits, sc, hc, alpha),
            }
        groups.append(
            GroupReadout(
                group=name,
                is_control=name == control,
                users=n_users,
                recommendations=int(recs.sum()),
                hits=int(hits.sum()),
                smiled=int(smiled.sum()),
                users_with_hit=with_hit,
                values=values,
                differences=differences,
            )
        )
    return Readout(
        experiment=experiment.name,
        shuffle=shuffle,
        control=control,
        since_ms=since_ms,
        until_ms=until_ms,
        alpha=alpha,
        min_users=experiment.readout.min_users,
        groups=groups,
    )


def experiment_of(features: ProjectFeatures, project: str, name: str | None) -> Experiment:
    """The named experiment of the project (or its first one).

    Raises:
        ReadoutError: The project runs no experiment, or none of that name.
    """
    if not features.experiments:
        raise ReadoutError(
            f"project {project!r} runs no experiment; declare one under "
            f"projects.{project}.experiments"
        )
    if name is None:
        return features.experiments[0]
    for e in features.experiments:
        if e.name == name:
            return e
    raise ReadoutError(
        f"project {project!r} has no experiment {name!r} "
        f"(declared: {[e.name for e in features.experiments]})"
    )


def readout(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    until_ms: int | None = None,
    shuffle: int | None = None,
) -> Readout:
    """The cumulative readout of a generation (default: the current one) until ``until_ms``."""
    current, started = current_generation(store, project, experiment)
    chosen = current if shuffle is None else shuffle
    since = (
        started if chosen == current else _generation_bounds(store, project, experiment, chosen)[0]
    )
    if not since:  # never recorded: the generation started with its first recommendation
        since = first_served(store, project, experiment.name)
    until = time.time_ns() // 1_000_000 + 1 if until_ms is None else until_ms
    users = per_user(store, project, experiment, chosen, since, until)
    return compare(experiment, users, chosen, since, until)


def first_served(store: OfflineStore, project: str, experiment: str) -> int:
    """The time (ms) of the experiment's first attributed recommendation (0 if none)."""
    table = ensure_outcomes(store, project)
    first = store.query_df(
        f"SELECT min(rec_ts) AS t FROM {table} WHERE experiment = {{e:String}}", {"e": experiment}
    )
    value = first["t"].iloc[0] if len(first) else 0
    return 0 if value is None or pd.isna(value) else int(value)


def daily(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    shuffle: int,
    since_ms: int,
    until_ms: int,
) -> dict[str, Readout]:
    """One readout per serve day of a generation (for plots by day)."""
    users = per_user(store, project, experiment, shuffle, since_ms, until_ms, by_day=True)
    out: dict[str, Readout] = {}
    for key, frame in users.groupby("day") if len(users) else []:
        lo = day_start_ms(str(key))
        out[str(key)] = compare(experiment, frame, shuffle, lo, lo + DAY_MS)
    return dict(sorted(out.items()))


def group_intervals(
    store: OfflineStore,
    project: str,
    experiment: Experiment,
    shuffle: int,
    since_ms: int,
    until_ms: int,
    metric: str = PRIMARY,
) -> pd.DataFrame:
    """Each group's ``metric`` per day with its own interval: ``day, group, value, low, high``."""
    users = per_user(store, project, experiment, shuffle, since_ms, until_ms, by_day=True)
    rows = []
    alpha = experiment.readout.alpha
    for (key, group), frame in users.groupby(["day", "group"]) if len(users) else []:
        recs = frame["recs"].to_numpy(np.float64)
        hits = frame["hits"].to_numpy(np.float64)
        smiled = frame["smiled"].to_numpy(np.float64)
        if metric == "hit_rate":
            value, low, high = ratio_interval(hits, recs, alpha)
        elif metric == "smile_rate":
            value, low, high = ratio_interval(smiled, hits, alpha)
        else:
            share = (hits > 0).astype(np.float64)
            value, low, high = ratio_interval(share, np.ones_like(share), alpha)
        rows.append({"day": key, "group": group, "value": value, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["day", "group", "value", "low", "high"])


def write_readout(store: OfflineStore, project: str, day: str, scope: str, result: Readout) -> int:
    """Store ``result`` as day ``day``'s rows of ``scope`` (replacing them); rows written."""
    table = store.table(project, READOUT_TABLE)
    store.command(_READOUT_DDL.format(table=table))
    store.command(
        f"ALTER TABLE {table} DELETE WHERE partition = {{p:String}} AND experiment = {{e:String}} "
        "AND scope = {s:String} SETTINGS mutations_sync = 1",
        {"p": day, "e": result.experiment, "s": scope},
    )
    rows = pd.DataFrame(result.rows())
    if rows.empty:
        return 0
    rows.insert(0, "partition", day)
    rows.insert(1, "experiment", result.experiment)
    rows.insert(2, "shuffle", result.shuffle)
    rows.insert(3, "scope", scope)
    rows["is_control"] = rows["is_control"].astype("uint8")
    rows["computed_ms"] = time.time_ns() // 1_000_000
    rows = rows.fillna({"low": math.nan})
    store.insert_frame(table, rows)
    return len(rows)


# -- the verdict ------------------------------------------------------------------------


@dataclass(frozen=True)
class Conclusion:
    """Whether an experiment's current generation is done, and why."""

    concluded: bool
    reason: str
    readout: Readout | None = None


def decide(experiment: Experiment, result: Readout, now_ms: int) -> Conclusion:
    """The verdict on ``result`` (a cumulative readout of the current generation)."""
    # A generation that never served anything (no start) has not run at all.
    days = (now_ms - result.since_ms) / DAY_MS if result.since_ms else 0.0
    significant = result.significant()
    if result.too_small:
        small = ", ".join(
            f"{g.group} ({g.users} users)" for g in result.groups if g.users < result.min_users
        )
        decided = f"too few users to decide: {small}; readout.min_users is {result.min_users}"
    elif significant:
        parts = [
            f"{g} {d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}], p={d.p_value:.3g}"
            for g, d in significant.items()
        ]
        return Conclusion(
            True, f"{METRIC_LABELS[PRIMARY]} differs from control: " + "; ".join(parts), result
        )
    else:
        decided = f"no significant difference in {METRIC_LABELS[PRIMARY]} at alpha={result.alpha}"
    if days >= experiment.readout.max_days:
        return Conclusion(
            True,
            f"ran {days:.1f} days, readout.max_days is {experiment.readout.max_days}; {decided}",
            result,
        )
    return Conclusion(False, decided, result)


def conclusion(
    store: OfflineStore, project: str, experiment: Experiment, now_ms: int | None = None
) -> Conclusion:
    """Whether ``experiment``'s current generation has concluded (see the module doc)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    result = readout(store, project, experiment, until_ms=now + 1)
    return decide(experiment, result, now)


__all__ = [
    "Conclusion",
    "GroupReadout",
    "Readout",
    "ReadoutError",
    "attribute",
    "compare",
    "conclusion",
    "current_generation",
    "daily",
    "decide",
    "experiment_of",
    "group_intervals",
    "per_user",
    "readout",
    "write_readout",
]
