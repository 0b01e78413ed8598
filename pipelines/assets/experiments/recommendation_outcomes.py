"""Asset: each served item and whether the user acted on it within the window, by serve day."""

# No `from __future__ import annotations`: Dagster reads the annotations.
import time

import dagster as dg

from twotier.features.spec import ProjectFeatures
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.assets.keys import RECOMMENDATION_OUTCOMES, asset_key, group_name
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL
from twotier.readout import OUTCOMES_TABLE, attribute


def make_recommendation_outcomes(
    project: str, features: ProjectFeatures, days: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``recommendation_outcomes`` asset (``twotier.readout.attribute``), daily partitions.

    A day's partition holds the recommendations served that day (UTC); re-materialising it
    replaces its rows, so a day whose window is still open can be refreshed later.
    """

    @dg.asset(
        key=asset_key(project, RECOMMENDATION_OUTCOMES),
        deps=[events_offline_key(project)],
        partitions_def=days,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "experiments"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        description=f"Each item served by {project!r}'s /recommend with its outcome: a view "
        "or smile within the window after it is a hit (last touch, exactly once).",
    )
    def recommendation_outcomes(
        context: dg.AssetExecutionContext, offline_store: OfflineStoreResource
    ) -> dg.MaterializeResult:
        keys = list(context.partition_keys)
        started = time.perf_counter()
        with offline_store.open() as store:
            by_day = attribute(store, project, features, keys)
            table = store.table(project, OUTCOMES_TABLE)
        for key, counts in by_day.items():
            rate = counts["hits"] / counts["recommendations"] if counts["recommendations"] else 0.0
            context.log.info(
                f"{key}: {counts['recommendations']} recommendations, {counts['hits']} hits "
                f"({rate:.2%}), {counts['smiled']} smiled"
                + ("" if counts["complete"] else "; window still open")
            )
            if len(keys) > 1:  # one metadata set per run: each day also gets its own
                context.log_event(
                    dg.AssetObservation(
                        asset_key=context.asset_key, partition=key, metadata=dict(counts)
                    )
                )
        total = {k: sum(int(c[k]) for c in by_day.values()) for k in ("recommendations", "hits")}
        return dg.MaterializeResult(
            metadata={
                "recommendations": total["recommendations"],
                "hits": total["hits"],
                "hit_rate": total["hits"] / total["recommendations"]
                if total["recommendations"]
                else 0.0,
                "days_with_open_window": [k for k, c in by_day.items() if not c["complete"]],
                "table": table,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )

    return recommendation_outcomes
