"""Asset: a project's events, copied from its Kafka topic into the offline store."""

# No `from __future__ import annotations`: Dagster reads the context and resource
# annotations at definition time.
import dagster as dg

from twotier.naming import events_topic
from twotier.offline_store import events_frame
from twotier.pipelines.assets.keys import EVENTS_OFFLINE, asset_key, group_name
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import KafkaResource, OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL

ASSET_NAME = EVENTS_OFFLINE


def events_offline_key(project: str) -> dg.AssetKey:
    """The asset key ``<project>/events_offline``."""
    return asset_key(project, ASSET_NAME)


def make_events_offline(project: str) -> dg.AssetsDefinition:
    """The ``events_offline`` asset of ``project``.

    It reads the whole events topic (from the beginning to the end offsets seen at
    start) and inserts the events into ``<project>__events``; loading is idempotent by
    ``event_id``, so re-materialising only adds what is new.
    """

    @dg.asset(
        key=events_offline_key(project),
        group_name=group_name(project, "ingest"),
        kinds={"kafka", "clickhouse"},
        pool=OFFLINE_STORE_POOL,
        backfill_policy=SINGLE_RUN,
        description=f"Events of project {project!r} from Kafka topic {events_topic(project)} "
        "in the offline store, one row per event_id.",
    )
    def events_offline(
        context: dg.AssetExecutionContext,
        kafka: KafkaResource,
        offline_store: OfflineStoreResource,
    ) -> dg.MaterializeResult:
        events = kafka.read_events(project)
        context.log.info(f"read {len(events)} events from {events_topic(project)}")
        with offline_store.open() as store:
            store.ensure_tables(project)
            inserted = store.insert_events(project, events_frame(events))
            total = store.count_events(project)
            table = store.table(project, "events")
        context.log.info(f"inserted {inserted} new events into {table} ({total} in all)")
        return dg.MaterializeResult(
            metadata={
                "rows_read": len(events),
                "rows_inserted": inserted,
                "rows_total": total,
                "table": table,
                "topic": events_topic(project),
            }
        )

    return events_offline
