"""Asset: the offline feature tables of a project (snapshots of its offline feature groups)."""

# No `from __future__ import annotations`: Dagster reads the annotations.
import dagster as dg

from twotier.features.offline import materialize_snapshots
from twotier.features.spec import ProjectFeatures
from twotier.naming import offline_table
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.assets.ingest.items_offline import items_offline_key
from twotier.pipelines.assets.keys import FEATURE_SNAPSHOTS, asset_key, group_name
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL


def make_feature_snapshots(project: str, features: ProjectFeatures) -> dg.AssetsDefinition:
    """The ``feature_snapshots`` asset: every offline group's snapshot table, rebuilt.

    Each table is rebuilt from all events and swapped in atomically, so training sets
    read either the old or the new snapshots, never a half-built table.
    """
    groups = [g for g in features.feature_groups if g.from_events(offline=True)]

    @dg.asset(
        key=asset_key(project, FEATURE_SNAPSHOTS),
        # Items: `by` counters resolved from an item's attributes (a movie's genres).
        deps=[events_offline_key(project), items_offline_key(project)],
        group_name=group_name(project, "features"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        backfill_policy=SINGLE_RUN,
        description="Point-in-time snapshots of the offline feature groups: "
        + ", ".join(offline_table(project, g.key) for g in groups),
    )
    def feature_snapshots(
        context: dg.AssetExecutionContext, offline_store: OfflineStoreResource
    ) -> dg.MaterializeResult:
        written: dict[str, int] = {}
        with offline_store.open() as store:
            for group in groups:
                written[group.key] = materialize_snapshots(store, project, group)
                context.log.info(f"snapshots of {group.key}: {written[group.key]} rows")
        return dg.MaterializeResult(
            metadata={
                "rows_by_group": dg.MetadataValue.json(written),
                "tables": [offline_table(project, g.key) for g in groups],
            }
        )

    return feature_snapshots
