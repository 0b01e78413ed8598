"""The validate mode: data checks on a project's topic, online store and offline events.

Every check returns a ``CheckResult`` (JSON-serialisable, ready to become a Dagster
asset check): its name, whether it passed, a severity (``ERROR`` blocks, ``WARN``
informs), the measured value, the threshold and a sentence saying what was found.

Checks:

* ``topic_recent``: the topic received records in the last N minutes (Kafka
  timestamps, looked up with ``offsets_for_times``).
* ``online_matches_offline.<group>``: per online feature group, every counter's total
  over the online collection equals the total the offline events give (the same SQL as
  the import) within a relative tolerance.
* ``events_ids_not_empty``, ``events_ts_range``, ``events_known_actions``,
  ``events_value_range``: schema, null and range checks on the offline events table.

Example:
    >>> results = run_validation(settings, "memes", recent_minutes=10)  # doctest: +SKIP
    >>> [r.name for r in results if not r.passed]
    []
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.events import KNOWN_ACTIONS
from twotier.feature_jobs.import_job import totals_select
from twotier.feature_jobs.offsets import EVENT_OFFSETS
from twotier.features.spec import FeatureGroup
from twotier.naming import events_topic, online_collection
from twotier.offline_store import OfflineStore, open_offline_store
from twotier.online_store import OnlineStore, connect

log = logging.getLogger(__name__)

Severity = Literal["ERROR", "WARN"]

MIN_TS_MS = 631_152_000_000
"""1990-01-01: events before this are considered corrupt (MovieLens starts in 1996)."""
FUTURE_SLACK_MS = 24 * 3600 * 1000
"""Events may be at most a day in the future (clock skew)."""


class CheckResult(BaseModel):
    """The outcome of one data check.

    Attributes:
        name: Stable check name, e.g. ``topic_recent`` or ``online_matches_offline.user_stats``.
        passed: Whether the data met the threshold.
        severity: ``ERROR`` (the data must not be used) or ``WARN`` (look at it).
        value: What was measured (a count, a ratio), None when nothing could be measured.
        threshold: What the value was compared with.
        message: One sentence: what was found and, when failing, what to do.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    severity: Severity
    value: float | None
    threshold: float | None
    message: str


class ValidationJobError(TwotierError):
    """Validation could not run (not: a check failed); the message names the fix."""


# -- topic -------------------------------------------------------------------------


def check_topic_recent(
    settings: Settings, project: str, minutes: float, now_ms: int | None = None
) -> CheckResult:
    """The topic holds at least one record with a Kafka timestamp in the last ``minutes``."""
    from kafka.errors import KafkaError

    from twotier.kafka_clients import kafka_error, make_consumer, topic_partitions

    name, topic = "topic_recent", events_topic(project)
    since = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) - int(minutes * 60_000)
    consumer = make_consumer(settings, "twotier-validate")
    try:
        tps = topic_partitions(consumer, topic)
        if not tps:
            return CheckResult(
                name=name,
                passed=False,
                severity="ERROR",
                value=None,
                threshold=1,
                message=f"topic {topic} does not exist: no events were ever produced",
            )
        found = consumer.offsets_for_times(dict.fromkeys(tps, since))
        end = consumer.end_offsets(tps)
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        consumer.close()
    recent = sum(end[tp] - found[tp].offset for tp in tps if found.get(tp) is not None)
    return CheckResult(
        name=name,
        passed=recent > 0,
        severity="ERROR",
        value=float(recent),
        threshold=1,
        message=(
            f"{topic}: {recent} records in the last {minutes:g} min"
            if recent
            else f"{topic}: no records in the last {minutes:g} min; are the producers running?"
        ),
    )


# -- online vs offline ---------------------------------------------------------------


def _counter_fields(fields: list[tuple[str, str]]) -> list[str]:
    return [name for name, kind in fields if kind in ("count", "sum")]


def check_online_matches_offline(
    online: OnlineStore,
    offline: OfflineStore,
    project: str,
    group: FeatureGroup,
    tolerance: float,
) -> CheckResult:
    """Counter totals of ``group`` online vs offline agree within ``tolerance`` (relative).

    The offline totals count every event of the offline events table (with the SQL the
    import uses); the value is the largest relative difference over the group's counters
    and sums.
    """
    name = f"online_matches_offline.{group.name}"
    sql, params, fields = totals_select(
        offline.table(project, "events"),
        offline.table(project, EVENT_OFFSETS),
        group,
        events_topic(project),
        None,
    )
    counters = _counter_fields(fields)
    sums = ", ".join(f"sum(`{f}`) AS `{f}`" for f in counters)
    offline_totals = {f: 0.0 for f in counters}
    if counters:
        frame = offline.query_df(f"SELECT {sums} FROM ({sql})", params)
        if not frame.empty:
            offline_totals = {f: float(frame[f].iloc[0] or 0) for f in counters}
    documents, online_totals = online.sum_fields(online_collection(project, group.key), counters)
    worst, worst_field = 0.0, ""
    for f in counters:
        diff = abs(online_totals[f] - offline_totals[f]) / max(abs(offline_totals[f]), 1.0)
        if diff > worst:
            worst, worst_field = diff, f
    passed = worst <= tolerance
    if passed:
        message = (
            f"{group.key}: {len(counters)} counter totals agree within {tolerance:.2%} "
            f"({documents} online documents)"
        )
    else:
        message = (
            f"{group.key}: {worst_field} is {online_totals[worst_field]:g} online but "
            f"{offline_totals[worst_field]:g} offline ({worst:.2%} > {tolerance:.2%}); "
            "run the offline job to catch up, or check the online job's lag and dead letters"
        )
    return CheckResult(
        name=name,
        passed=passed,
        severity="ERROR",
        value=worst,
        threshold=tolerance,
        message=message,
    )


# -- events table --------------------------------------------------------------------


def _count(store: OfflineStore, sql: str, params: dict[str, Any] | None = None) -> int:
    frame = store.query_df(sql, params)
    return 0 if frame.empty else int(frame["n"].iloc[0])


def check_events(
    store: OfflineStore,
    project: str,
    known_actions: Sequence[str],
    value_range: tuple[float, float],
    now_ms: int | None = None,
) -> list[CheckResult]:
    """Schema, null and range checks on the project's offline events table."""
    if not store.has_table(project, "events"):
        return [
            CheckResult(
                name="events_table",
                passed=False,
                severity="ERROR",
                value=None,
                threshold=None,
                message=f"{project} has no offline events table: run the offline job first",
            )
        ]
    table = store.table(project, "events")
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    total = _count(store, f"SELECT count() AS n FROM {table} FINAL")
    results = []

    empty_ids = _count(
        store,
        f"SELECT count() AS n FROM {table} FINAL "
        "WHERE event_id = '' OR user_id = '' OR item_id = '' OR action = ''",
    )
    results.append(
        _none_bad(
            "events_ids_not_empty",
            empty_ids,
            f"{empty_ids} of {total} events lack an event, user or item id or action"
            + ("" if empty_ids == 0 else "; fix the producer and reload"),
        )
    )

    hi = now + FUTURE_SLACK_MS
    bad_ts = _count(
        store,
        f"SELECT count() AS n FROM {table} FINAL WHERE ts < {{lo:Int64}} OR ts > {{hi:Int64}}",
        {"lo": MIN_TS_MS, "hi": hi},
    )
    results.append(
        _none_bad(
            "events_ts_range",
            bad_ts,
            f"{bad_ts} of {total} events have ts outside [1990-01-01, now + 1 day] "
            "(ts is milliseconds since the epoch"
            + (")" if bad_ts == 0 else "; seconds by mistake?)"),
        )
    )

    unknown = store.query_df(
        f"SELECT action, count() AS n FROM {table} FINAL "
        "WHERE action NOT IN {known:Array(String)} GROUP BY action ORDER BY n DESC",
        {"known": sorted(set(known_actions))},
    )
    n_unknown = 0 if unknown.empty else int(unknown["n"].sum())
    listed = [] if unknown.empty else [str(a) for a in unknown["action"].head(5)]
    results.append(
        _none_bad(
            "events_known_actions",
            n_unknown,
            f"{n_unknown} of {total} events have actions outside {sorted(known_actions)}"
            + (f": {listed}" if listed else ""),
            severity="WARN",
        )
    )

    lo, hi_value = value_range
    bad_values = _count(
        store,
        f"SELECT count() AS n FROM {table} FINAL "
        "WHERE NOT isFinite(value) OR value < {lo:Float64} OR value > {hi:Float64}",
        {"lo": float(lo), "hi": float(hi_value)},
    )
    results.append(
        _none_bad(
            "events_value_range",
            bad_values,
            f"{bad_values} of {total} events have a value outside [{lo:g}, {hi_value:g}]",
        )
    )
    return results


def _none_bad(name: str, bad: int, message: str, severity: Severity = "ERROR") -> CheckResult:
    """A check that passes when no row is bad (``bad`` rows counted by the caller)."""
    return CheckResult(
        name=name,
        passed=bad == 0,
        severity=severity,
        value=float(bad),
        threshold=0,
        message=message,
    )


# -- all together ----------------------------------------------------------------------


def run_validation(
    settings: Settings,
    project: str,
    *,
    recent_minutes: float = 60.0,
    tolerance: float = 0.01,
    value_range: tuple[float, float] = (-1e6, 1e6),
    known_actions: Sequence[str] | None = None,
    checks: Sequence[str] = ("topic", "online", "events"),
    now_ms: int | None = None,
) -> list[CheckResult]:
    """Run the data checks of ``project``.

    Args:
        settings: Kafka, both stores and the project's feature groups.
        project: The project.
        recent_minutes: ``topic_recent`` looks this far back.
        tolerance: Largest relative difference of online vs offline counter totals.
        value_range: ``events_value_range`` bounds, inclusive.
        known_actions: Accepted actions (default: ``events.KNOWN_ACTIONS`` plus every
            action the project's feature groups count).
        checks: Which families to run: ``topic``, ``online``, ``events``.
        now_ms: The time the checks treat as now (default: the clock).

    Returns:
        One ``CheckResult`` per check, in the order above.

    Raises:
        ValidationJobError: An unknown check family or a bad argument.
        TwotierError: Kafka or a store is unreachable.
    """
    unknown = sorted(set(checks) - {"topic", "online", "events"})
    if unknown:
        raise ValidationJobError(
            f"unknown check families {unknown}: use 'topic', 'online' and/or 'events'"
        )
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValidationJobError(f"tolerance is {tolerance!r}: use a number >= 0, e.g. 0.01")
    if recent_minutes <= 0:
        raise ValidationJobError(f"recent_minutes is {recent_minutes!r}: use a number > 0")
    if value_range[0] > value_range[1]:
        raise ValidationJobError(f"value_range {value_range!r} is empty: use (low, high)")
    features = settings.project_features(project)
    actions = set(known_actions if known_actions is not None else KNOWN_ACTIONS)
    if known_actions is None:
        actions |= {f.action for g in features.feature_groups for f in g.raw_features()}
    results: list[CheckResult] = []
    if "topic" in checks:
        results.append(check_topic_recent(settings, project, recent_minutes, now_ms))
    if "online" in checks or "events" in checks:
        with open_offline_store(settings) as offline:
            offline.ensure_tables(project)
            if "online" in checks:
                with connect(settings) as online:
                    for group in features.feature_groups:
                        if group.from_events(online=True):
                            results.append(
                                check_online_matches_offline(
                                    online, offline, project, group, tolerance
                                )
                            )
            if "events" in checks:
                results.extend(check_events(offline, project, sorted(actions), value_range, now_ms))
    for r in results:
        (log.info if r.passed else log.warning)("check %s: %s", r.name, r.message)
    return results
