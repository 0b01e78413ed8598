"""Asset: a project's item data, copied from the online store into the offline store."""

# No `from __future__ import annotations`: Dagster reads the context and resource
# annotations at definition time.
import dagster as dg

from twotier.features.spec import ProjectFeatures
from twotier.items import CONTENT_GROUP, all_items, items_frame
from twotier.naming import online_collection
from twotier.pipelines.assets.keys import ITEMS_OFFLINE, asset_key, group_name
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.assets.project import project_settings
from twotier.pipelines.resources import OfflineStoreResource, OnlineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL

ASSET_NAME = ITEMS_OFFLINE


def items_offline_key(project: str) -> dg.AssetKey:
    """The asset key ``<project>/items_offline``."""
    return asset_key(project, ASSET_NAME)


def make_items_offline(project: str, features: ProjectFeatures) -> dg.AssetsDefinition:
    """The ``items_offline`` asset of ``project``.

    It copies the item data that serving reads (the online ``content`` collection, loaded
    by ``twotier replay`` or ``twotier.items.load_items``) into ``<project>__items``, so
    training sets see the attributes serving sees: static item groups and ``by`` counters
    resolved from an item's attributes (a movie's genres). Idempotent: unchanged items
    are not written again.
    """
    source = online_collection(project, CONTENT_GROUP)

    @dg.asset(
        key=items_offline_key(project),
        group_name=group_name(project, "ingest"),
        kinds={"mongodb", "clickhouse"},
        pool=OFFLINE_STORE_POOL,
        backfill_policy=SINGLE_RUN,
        description=f"Item attributes of project {project!r} from the online collection "
        f"{source} in the offline store, one row per item_id.",
    )
    def items_offline(
        context: dg.AssetExecutionContext,
        online_store: OnlineStoreResource,
        offline_store: OfflineStoreResource,
    ) -> dg.MaterializeResult:
        items = all_items(online_store.settings(project_settings(project, features)), project)
        if not items:
            context.log.warning(
                f"{source} holds no items: static item features will be defaults and "
                "`by` counters will count only events whose context names the value "
                "(load item data first: `twotier replay` loads MovieLens movies)"
            )
        frame = items_frame(items)
        with offline_store.open() as store:
            store.ensure_tables(project)
            written = store.insert_items(project, frame) if items else 0
            table = store.table(project, "items")
        context.log.info(f"{written} of {len(items)} items new or changed in {table}")
        return dg.MaterializeResult(
            metadata={
                "items_read": len(items),
                "items_written": written,
                "source": source,
                "table": table,
            }
        )

    return items_offline
