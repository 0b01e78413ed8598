"""Offline-store upkeep of a project: compact its tables (one op in the offline-store pool).

``OPTIMIZE TABLE ... FINAL`` merges the parts of the ReplacingMergeTree tables, so stored
duplicates of an event (possible only under concurrent writers to a server) are gone and
reads without ``FINAL`` are exact and faster. The op declares ``pool=OFFLINE_STORE_POOL``
like every asset that opens the store, so it never runs beside them.
"""

import time

import dagster as dg

from twotier.naming import asset_prefix
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL, OfflineStoreResource

TABLES = ("events", "items")


def compact_job_name(project: str) -> str:
    """``<project>_compact_offline_store``."""
    return f"{asset_prefix(project)[0]}_compact_offline_store"


def make_compact_offline_store_job(project: str) -> dg.JobDefinition:
    """The job that compacts ``project``'s offline tables."""

    @dg.op(
        name=f"{asset_prefix(project)[0]}_compact_offline_tables",
        pool=OFFLINE_STORE_POOL,
        tags={"twotier/project": project},
    )
    def compact(context: dg.OpExecutionContext, offline_store: OfflineStoreResource) -> int:
        """Merge the parts of the project's events and items tables; returns events kept."""
        started = time.monotonic()
        with offline_store.open() as store:
            store.ensure_tables(project)
            for name in TABLES:
                store.command(f"OPTIMIZE TABLE {store.table(project, name)} FINAL")
            events = store.count_events(project)
        context.log.info(
            f"compacted {project}'s offline tables in {time.monotonic() - started:.1f} s: "
            f"{events} events"
        )
        return events

    @dg.job(
        name=compact_job_name(project),
        description=f"Compact {project}'s offline-store tables (OPTIMIZE ... FINAL).",
        tags={"twotier/project": project, "twotier/kind": "upkeep"},
    )
    def compact_job() -> None:
        compact()

    return compact_job
