"""Time partitions of the training sets: one per calendar month of event time (UTC).

Monthly partitions suit both a historical data set (MovieLens: 1996-2018, about 270
months) and a live feed (the current month is a partition too, ``end_offset=1``, so a
retrain sees today's events; re-materialising it replaces its rows). Every asset has a
single-run backfill policy: a backfill of many months is one run whose assets see the
whole range at once (``context.partition_time_window``) and write each month's rows.

Example:
    >>> keys = training_partitions("2000-01-01").get_partition_keys()
    >>> keys[:2]
    ['2000-01-01', '2000-02-01']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import dagster as dg

from twotier.models.datasets import Window

DEFAULT_PARTITIONS_START = "1996-01-01"
"""The first month: MovieLens starts in 1996 (a project's own start belongs in config)."""

warnings.filterwarnings(
    "ignore", message=r"Parameter `backfill_policy` .* in beta", category=dg.BetaWarning
)
SINGLE_RUN = dg.BackfillPolicy.single_run()
"""Backfills of any number of partitions run as one run (``--partition-range``)."""

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def training_partitions(start: str = DEFAULT_PARTITIONS_START) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions from ``start`` (``YYYY-MM-DD``) to the current month inclusive."""
    return dg.MonthlyPartitionsDefinition(start_date=start, end_offset=1)


DEFAULT_READOUT_START = "2026-11-01"
"""The first day of the daily readout partitions (``pipelines.readout_start``)."""


def daily_partitions(start: str = DEFAULT_READOUT_START) -> dg.DailyPartitionsDefinition:
    """Daily partitions (UTC) of serve time from ``start`` (``YYYY-MM-DD``) to today inclusive."""
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1)


def windows_ms(
    partitions_def: dg.TimeWindowPartitionsDefinition, keys: Sequence[str]
) -> list[Window]:
    """``(key, start_ms, end_ms)`` of each partition key, in order."""
    out: list[Window] = []
    for key in keys:
        window = partitions_def.time_window_for_partition_key(key)
        out.append((key, int(window.start.timestamp() * 1000), int(window.end.timestamp() * 1000)))
    return out


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run materialise partitions ``first`` to ``last`` inclusive."""
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def partitions_covering(
    partitions_def: dg.TimeWindowPartitionsDefinition, first_ts_ms: int, last_ts_ms: int
) -> tuple[str, str]:
    """The first and last partition keys whose windows hold ``first_ts_ms`` and ``last_ts_ms``.

    Times before the first partition map to it; after the last, to the last.
    """
    keys = partitions_def.get_partition_keys()
    windows = windows_ms(partitions_def, keys)

    def find(ts: int) -> str:
        for key, start, end in windows:
            if start <= ts < end:
                return key
        return keys[0] if ts < windows[0][1] else keys[-1]

    return find(first_ts_ms), find(last_ts_ms)


def observe_partitions(
    context: dg.AssetExecutionContext,
    windows: Sequence[Window],
    rows: Mapping[str, int],
    what: str = "rows",
) -> None:
    """One observation per partition with that partition's own row count and dates.

    A single-run backfill gives all its partitions one materialisation metadata (the
    run's totals; Dagster has no per-partition metadata there), so each partition's own
    figures are logged as an ``AssetObservation`` of that partition, which the asset's
    partition view shows.
    """
    import datetime as dt

    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")

    for key, start, end in windows:
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                partition=key,
                metadata={what: int(rows.get(key, 0)), "from": day(start), "until": day(end)},
            )
        )
