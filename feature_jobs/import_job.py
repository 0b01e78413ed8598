"""The import mode: a new online feature group, bootstrapped from the offline history.

For each chosen online feature group, every entity's raw values as of the events the
offline store holds are computed inside ClickHouse with the semantics of
``twotier.features.aggregate.aggregate`` (a count adds 1 and a sum the event's value per
event of its action, ``by`` picks ``<name>__<value>`` for declared values only, a
last-seen time is the largest ``ts``; fields never fed are not written) and written with
``OnlineStore.set_fields`` (``$set``: importing twice gives the same documents).

Only events inside the contiguous Kafka history the offline mode recorded are counted,
and the handoff document (``feature_jobs.offsets``) tells the online job to start right
after it, so nothing is counted twice. Run it before the online job first writes the
group (on a new checkpoint); a running online job keeps its own offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.feature_jobs.offsets import (
    EVENT_OFFSETS,
    Offsets,
    StartOffsets,
    covered_offsets,
    loaded_ranges,
    topic_offsets,
    write_start_offsets,
)
from twotier.features.offline import (
    by_condition_sql,
    counter_amount_sql,
    entity_sql,
    events_source,
    needs_items,
)
from twotier.features.spec import CounterFeature, FeatureGroup, LastSeenFeature, value_field
from twotier.naming import events_topic, online_collection
from twotier.offline_store import OfflineStore, open_offline_store
from twotier.online_store import connect
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)


WRITE_CHUNK = 5_000
"""Documents per ``set_fields`` call."""


class ImportJobError(TwotierError):
    """The import cannot run as asked; the message names the group or offsets and the fix."""


@dataclass
class ImportResult:
    """What one ``run_import`` call did.

    Attributes:
        topic: The project's topic.
        offsets: Per partition, the next offset after the imported history (the handoff).
        documents: Documents written per feature group key.
        seconds: Wall time.
    """

    topic: str
    offsets: Offsets
    documents: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "documents": self.documents,
            "seconds": round(self.seconds, 3),
        }


def _say(progress: Progress, line: str) -> None:
    log.info(line)
    progress(line)


def totals_select(
    events_table: str,
    offsets_table: str,
    group: FeatureGroup,
    topic: str,
    ends: Offsets | None,
    items_table: str | None = None,
) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
    """The query of every entity's raw values from the events below ``ends``.

    Args:
        events_table: The qualified events table.
        offsets_table: The qualified ``event_offsets`` table.
        group: The feature group.
        topic: The topic the offsets refer to.
        ends: Per partition, only events at a lower offset count; None counts every
            event of the table (loaded by any means).
        items_table: The qualified items table, for ``by`` counters whose value comes
            from the item's attributes, as the streaming enrichment resolves it; None:
            the event context only.

    Returns:
        The SQL, its parameters, and per stored field ``(field, kind)`` with kind
        ``count``, ``sum`` or ``max``. Columns: ``entity_id``, then per field its value
        and ``_n_<field>``, the number of events that fed it.
    """
    params: dict[str, Any] = {"topic": topic}
    columns: list[str] = []
    fields: list[tuple[str, str]] = []
    actions: list[str] = []

    def bind(value: Any, kind: str) -> str:
        name = f"p{len(params)}"
        params[name] = value
        return f"{{{name}:{kind}}}"

    for f in group.raw_features():
        actions.append(f.action)
        is_action = f"action = {bind(f.action, 'String')}"
        if isinstance(f, CounterFeature) and f.by:
            by = f.by
            parts = [
                (
                    value_field(f.name, v),
                    f"{is_action} AND " + by_condition_sql(by, v, bind, items_table is not None),
                )
                for v in f.values
            ]
        else:
            parts = [(f.name, is_action)]
        for name, condition in parts:
            if isinstance(f, LastSeenFeature):
                kind, value = "max", f"maxIf(ts, {condition})"
            elif f.agg == "count" and f.half_life_days is None:
                kind, value = "count", f"countIf({condition})"
            else:
                kind, value = "sum", f"sumIf({counter_amount_sql(f, bind)}, {condition})"
            columns.append(f"{value} AS `{name}`, countIf({condition}) AS `_n_{name}`")
            fields.append((name, kind))
    where = f"action IN {bind(sorted(set(actions)), 'Array(String)')}"
    if ends is not None:
        below = " OR ".join(
            f"(partition = {int(p)} AND offset < {int(end)})" for p, end in sorted(ends.items())
        )
        where += f"""
          AND event_id IN (
              SELECT event_id FROM {offsets_table} FINAL
              WHERE topic = {{topic:String}} AND ({below or "0"})
          )"""
    sql = f"""
        SELECT {entity_sql(group.entity)} AS entity_id, {", ".join(columns)}
        FROM {events_source(events_table, items_table, where)}
        GROUP BY entity_id
        ORDER BY entity_id
    """
    return sql, params, fields


def group_totals(
    store: OfflineStore, project: str, group: FeatureGroup, topic: str, ends: Offsets
) -> dict[str, dict[str, float]]:
    """Per entity, the raw values of ``group`` the events below ``ends`` give (fed fields only)."""
    items = (
        store.table(project, "items")
        if needs_items(group) and store.has_table(project, "items")
        else None
    )
    sql, params, fields = totals_select(
        store.table(project, "events"),
        store.table(project, EVENT_OFFSETS),
        group,
        topic,
        ends,
        items,
    )
    frame = store.query_df(sql, params)
    docs: dict[str, dict[str, float]] = {}
    records = frame.to_dict("records")
    for row in records:
        doc: dict[str, float] = {}
        for name, kind in fields:
            if int(row[f"_n_{name}"]) == 0:
                continue
            value = row[name]
            doc[name] = int(value) if kind == "count" else float(value)
        if doc:
            docs[str(row["entity_id"])] = doc
    return docs


def _groups(settings: Settings, project: str, names: Sequence[str] | None) -> list[FeatureGroup]:
    features = settings.project_features(project)
    if names is None:
        return [g for g in features.feature_groups if g.from_events(online=True)]
    chosen = []
    for name in names:
        try:
            group = features.group(name)
        except KeyError as exc:
            raise ImportJobError(f"project {project!r}: {exc.args[0]}") from None
        if not group.online:
            raise ImportJobError(
                f"feature group {group.key!r} of {project!r} is offline only: nothing to import"
            )
        if group.static:
            raise ImportJobError(
                f"feature group {group.key!r} of {project!r} holds item attributes, read from "
                "the item data: no event feeds it, so there is nothing to import"
            )
        chosen.append(group)
    return chosen


def run_import(
    settings: Settings,
    project: str,
    group_names: Sequence[str] | None = None,
    progress: Progress = quiet,
) -> ImportResult:
    """Import online feature groups of ``project`` from the offline store's history.

    Args:
        settings: The offline and online stores and the project's feature groups.
        project: The project.
        group_names: Feature group names to import (default: every online group).
        progress: Receives one line per step.

    Returns:
        The handoff offsets and the documents written per group.

    Raises:
        ImportJobError: An unknown or offline-only group, or nothing loaded offline yet.
        OffsetsError: The loaded history has a gap, or does not reach back to the
            topic's first available offset.
        OfflineStoreError / OnlineStoreError: A store refused.
    """
    started = time.monotonic()
    groups = _groups(settings, project, group_names)
    topic = events_topic(project)
    with open_offline_store(settings) as offline:
        ranges = loaded_ranges(offline, project, topic)
        if not ranges:
            raise ImportJobError(
                f"the offline store holds no Kafka history of {project!r}: run "
                f"`twotier batch offline --project {project}` first"
            )
        starts, ends = covered_offsets(ranges)
        begin, end = topic_offsets(settings, topic)
        for p in sorted(end):
            if p not in ends:
                if begin[p] < end[p]:
                    raise ImportJobError(
                        f"partition {p} of {topic} was never loaded offline: rerun "
                        f"`twotier batch offline --project {project}` first"
                    )
                ends[p] = end[p]
            elif starts[p] > begin[p]:
                raise ImportJobError(
                    f"the offline history of {topic} partition {p} starts at offset "
                    f"{starts[p]}, after the first available {begin[p]}: load from the "
                    f"beginning first (twotier batch offline --project {project})"
                )
        totals = {g.key: group_totals(offline, project, g, topic, ends) for g in groups}
    result = ImportResult(topic, dict(sorted(ends.items())))
    with connect(settings) as online:
        for group in groups:
            collection = online_collection(project, group.key)
            online.ensure_indexes(collection)
            docs = totals[group.key]
            items = list(docs.items())
            for i in range(0, len(items), WRITE_CHUNK):
                online.set_fields(collection, dict(items[i : i + WRITE_CHUNK]))
            result.documents[group.key] = len(docs)
            _say(progress, f"import {project}: {len(docs)} documents into {collection}")
        start = StartOffsets(
            topic=topic,
            offsets=result.offsets,
            groups=[g.key for g in groups],
            ts=time.time_ns() // 1_000_000,
        )
        write_start_offsets(online, project, start)
    result.seconds = time.monotonic() - started
    _say(
        progress,
        f"import {project}: done; the online job starts at {start.spark_json()} "
        f"on a new checkpoint ({result.seconds:.1f} s)",
    )
    return result
