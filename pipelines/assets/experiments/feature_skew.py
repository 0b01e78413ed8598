"""Asset and check: served feature rows against offline point-in-time values, by serve day.

``feature_skew`` compares the feature rows serving logged for a sampled share of requests
(``serving.feature_log_fraction``) with ``historical_features`` for the same user, item
and time (``twotier.feature_skew``), and stores per-feature mismatch rates in
``<project>__feature_skew``. The check ``feature_skew_within_threshold`` fails (ERROR)
when a feature's mismatch rate is above ``pipelines.skew_max_mismatch_rate``.
"""

# No `from __future__ import annotations`: Dagster reads the annotations.
import contextlib
import time

import dagster as dg
from pydantic import Field

from twotier.feature_skew import (
    SKEW_TABLE,
    Tolerance,
    day_skew,
    judge,
    rates_by_feature,
    read_skew,
    worst_features_markdown,
    write_skew,
)
from twotier.features.spec import ProjectFeatures
from twotier.naming import offline_table
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.assets.keys import FEATURE_SKEW, FEATURE_SNAPSHOTS, asset_key, group_name
from twotier.pipelines.assets.partitions import RANGE_END_TAG, RANGE_START_TAG, SINGLE_RUN
from twotier.pipelines.assets.project import project_settings
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL

CHECK_NAME = "feature_skew_within_threshold"
DEFAULT_MAX_MISMATCH_RATE = 0.05
DEFAULT_MIN_ROWS = 50
PARTITION_TAG = "dagster/partition"


class FeatureSkewConfig(dg.Config):
    """When a served and an offline value count as equal."""

    abs_tolerance: float = Field(1e-6, ge=0, description="Absolute tolerance.")
    rel_tolerance: float = Field(
        1e-3, ge=0, description="Relative tolerance, times |offline value|."
    )


def checked_days(
    context: dg.AssetCheckExecutionContext,
    key: dg.AssetKey,
    days: dg.TimeWindowPartitionsDefinition,
) -> list[str]:
    """The serve days a check run judges: its run's partition or range, else the latest
    materialised partition of ``key`` (none before the first materialisation)."""
    tags = context.run.tags
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        span = dg.PartitionKeyRange(tags[RANGE_START_TAG], tags[RANGE_END_TAG])
        with contextlib.suppress(Exception):  # a range of other partitions (months)
            return list(days.get_partition_keys_in_range(span))
    event = context.instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or materialization.partition is None:
        return []
    return [materialization.partition]


def make_feature_skew(
    project: str,
    features: ProjectFeatures,
    days: dg.TimeWindowPartitionsDefinition,
    *,
    max_mismatch_rate: float = DEFAULT_MAX_MISMATCH_RATE,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The ``feature_skew`` asset of ``project`` (daily partitions) and its check.

    Args:
        project: The project.
        features: Its declaration (the tier-two models' declared specs are compared).
        days: The daily serve-day partitions.
        max_mismatch_rate: The check fails above this mismatch rate of any feature.
        min_rows: Below this many sampled rows the check passes with a warning.
    """
    key = asset_key(project, FEATURE_SKEW)
    settings = project_settings(project, features)

    @dg.asset(
        key=key,
        deps=[events_offline_key(project), asset_key(project, FEATURE_SNAPSHOTS)],
        partitions_def=days,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "experiments"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        description=f"Per feature, how often {project!r}'s served tier-two inputs (the "
        "sampled rows serving logs) differ from the offline point-in-time values for the "
        f"same user, item and time; table {offline_table(project, SKEW_TABLE)}.",
    )
    def feature_skew(
        context: dg.AssetExecutionContext,
        config: FeatureSkewConfig,
        offline_store: OfflineStoreResource,
    ) -> dg.MaterializeResult:
        tolerance = Tolerance(config.abs_tolerance, config.rel_tolerance)
        started = time.perf_counter()
        results = []
        with offline_store.open() as store:
            for day in sorted(context.partition_keys):
                result = day_skew(store, settings, project, day, tolerance)
                write_skew(store, project, result)
                results.append(result)
                context.log.info(
                    f"{day}: {result.sampled} sampled rows, {result.compared} compared, "
                    f"{len(result.rows)} feature rows written"
                    + (f"; unreadable {result.unreadable}" if result.unreadable else "")
                )
            table = store.table(project, SKEW_TABLE)
            rows = read_skew(store, project, [r.day for r in results])
        skipped: dict[str, str] = {}
        unreadable: dict[str, int] = {}
        for result in results:
            skipped |= result.skipped
            for reason, count in result.unreadable.items():
                unreadable[reason] = unreadable.get(reason, 0) + count
        return dg.MaterializeResult(
            metadata={
                "rows_sampled": sum(r.sampled for r in results),
                "rows_compared": sum(r.compared for r in results),
                "worst_features": dg.MetadataValue.md(worst_features_markdown(rows)),
                "mismatch_rates": dg.MetadataValue.json(rates_by_feature(rows)),
                "skipped_features": dg.MetadataValue.json(skipped),
                "unreadable_rows": dg.MetadataValue.json(unreadable),
                "spec": "declared (the project's model declaration, by model name)",
                "tolerance": f"abs {tolerance.absolute:g} + rel {tolerance.relative:g}",
                "table": table,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )

    # Not partitioned itself (the retrain job's partition lookup sees every partitioned
    # definition): the check judges the days its run materialised, else the latest day.
    @dg.asset_check(
        asset=key,
        name=CHECK_NAME,
        blocking=False,
        pool=OFFLINE_STORE_POOL,
        description=f"Every feature's mismatch rate is at most {max_mismatch_rate:.1%} "
        f"(pipelines.skew_max_mismatch_rate) on the serve days of the run (else the latest "
        f"materialised day); under {min_rows} sampled rows (pipelines.skew_min_rows) it "
        "only warns.",
    )
    def feature_skew_within_threshold(
        context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource
    ) -> dg.AssetCheckResult:
        days_checked = checked_days(context, key, days)
        with offline_store.open() as store:
            rows = read_skew(store, project, days_checked)
        verdict = judge(rows, max_mismatch_rate, min_rows)
        if not verdict.passed:
            context.log.warning(verdict.message)
        severity = (
            dg.AssetCheckSeverity.WARN
            if verdict.severity == "WARN"
            else dg.AssetCheckSeverity.ERROR
        )
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=severity,
            description=verdict.message,
            metadata={
                "days": ", ".join(days_checked),
                "rows_compared": verdict.rows,
                "failing_features": dg.MetadataValue.json(verdict.failing),
                "mismatch_rates": dg.MetadataValue.json(verdict.rates),
                "max_mismatch_rate": max_mismatch_rate,
            },
        )

    return feature_skew, feature_skew_within_threshold
