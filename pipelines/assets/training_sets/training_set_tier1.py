"""Asset: tier one's training set, the views of each month (partitioned by event time)."""

# No `from __future__ import annotations`: Dagster reads the annotations.
import dagster as dg

from twotier.models.data import read_interactions
from twotier.models.datasets import TIER_ONE_TABLE, write_tier_one_set
from twotier.naming import offline_table
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.assets.keys import TRAINING_SET_TIER_ONE, asset_key, group_name
from twotier.pipelines.assets.partitions import SINGLE_RUN, observe_partitions, windows_ms
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL


def make_training_set_tier_one(
    project: str, partitions_def: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``training_set_tier1`` asset: the project's view events, one partition per month.

    Tier one learns from views only, so point-in-time correctness is the partition's
    time window itself: a model trained before a cut-off reads rows before it.
    """

    @dg.asset(
        key=asset_key(project, TRAINING_SET_TIER_ONE),
        deps=[events_offline_key(project)],
        partitions_def=partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "training_sets"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        description=f"Views of {project!r} per month for tier one, in "
        f"{offline_table(project, TIER_ONE_TABLE)}.",
    )
    def training_set_tier1(
        context: dg.AssetExecutionContext, offline_store: OfflineStoreResource
    ) -> dg.MaterializeResult:
        windows = windows_ms(partitions_def, context.partition_keys)
        with offline_store.open() as store:
            views = read_interactions(
                store, project, "view", since_ts=windows[0][1], until_ts=windows[-1][2]
            )
            counts = write_tier_one_set(store, project, views, windows)
        filled = {k: n for k, n in counts.items() if n}
        observe_partitions(context, windows, counts)
        context.log.info(
            f"tier-one training set: {len(views)} views in {len(filled)} of "
            f"{len(counts)} partitions {windows[0][0]}..{windows[-1][0]}"
        )
        return dg.MaterializeResult(
            metadata={
                "rows": len(views),
                "partitions": len(counts),
                "partitions_with_rows": len(filled),
                "rows_by_partition": dg.MetadataValue.json(filled),
            }
        )

    return training_set_tier1
