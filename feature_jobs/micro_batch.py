"""One micro-batch of Kafka records → validated events → per-group online-store updates.

The work runs where the records are: each Spark partition parses its records with
``twotier.events.parse_event`` (the same validation as every other consumer), looks up
the attributes of just its items, and aggregates per feature group with
``twotier.feature_jobs.enrich`` (``aggregate`` semantics). The driver receives one small
``PartitionResult`` per partition and merges them with ``GroupUpdates.merge``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from twotier.config import Settings
from twotier.events import BadEvent, BadEventKind, Event, parse_event
from twotier.feature_jobs.enrich import GroupPlan, ItemAttributes, lookup_items
from twotier.features.aggregate import GroupUpdates
from twotier.features.spec import FeatureGroup


@dataclass(frozen=True)
class DeadLetter:
    """A malformed Kafka record, with what ``dead_letter_record`` needs to describe it."""

    kind: BadEventKind
    detail: str
    raw: bytes | None
    topic: str
    partition: int
    offset: int
    ts: int | None

    def error(self) -> BadEvent:
        """The ``BadEvent`` this record failed with."""
        return BadEvent(self.detail, self.kind)


@dataclass
class PartitionResult:
    """What one partition (or, merged, one micro-batch) of records amounts to.

    Attributes:
        rows: Kafka records read.
        events: Valid events among them.
        updates: Per feature-group key, the ``$inc``/``$max`` updates.
        dead_letters: The malformed records, in offset order per partition.
        items_looked_up: Item ids whose attributes were read from the online store.
        read_s: Time spent receiving and parsing records.
        lookup_s: Time spent reading item attributes.
        aggregate_s: Time spent aggregating.
    """

    rows: int = 0
    events: int = 0
    updates: dict[str, GroupUpdates] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    items_looked_up: int = 0
    read_s: float = 0.0
    lookup_s: float = 0.0
    aggregate_s: float = 0.0

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per reason (``BadEvent.kind``)."""
        return dict(Counter(d.kind for d in self.dead_letters))

    def merge(self, other: PartitionResult) -> PartitionResult:
        """Add ``other`` into this one; timings keep the slowest partition's; returns ``self``."""
        self.rows += other.rows
        self.events += other.events
        for key, updates in other.updates.items():
            self.updates.setdefault(key, GroupUpdates()).merge(updates)
        self.dead_letters.extend(other.dead_letters)
        self.items_looked_up += other.items_looked_up
        self.read_s = max(self.read_s, other.read_s)
        self.lookup_s = max(self.lookup_s, other.lookup_s)
        self.aggregate_s = max(self.aggregate_s, other.aggregate_s)
        return self


def online_groups(settings: Settings, project: str) -> list[FeatureGroup]:
    """The project's feature groups kept in the online store, in declaration order.

    Raises:
        ConfigError: The project is not declared.
    """
    return [
        g for g in settings.project_features(project).feature_groups if g.from_events(online=True)
    ]


def parse_record(
    value: bytes | bytearray | None,
    project: str,
    topic: str,
    partition: int,
    offset: int,
    ts: int | None,
) -> Event | DeadLetter:
    """One Kafka record as an event of ``project``, or the dead letter that describes it."""
    try:
        if value is None:
            raise BadEvent("empty message (tombstone)", "bad_json")
        return parse_event(bytes(value), (project,))
    except BadEvent as error:
        raw = None if value is None else bytes(value)
        return DeadLetter(error.kind, error.reason, raw, topic, partition, offset, ts)


class PartitionProcessor:
    """The ``mapPartitions`` function: records → one ``PartitionResult`` (picklable)."""

    def __init__(self, settings: Settings, project: str, groups: Sequence[FeatureGroup]) -> None:
        self.settings = settings
        self.project = project
        self.groups = list(groups)

    def __call__(self, rows: Iterable[Any]) -> Iterator[PartitionResult]:
        yield self.process(
            (r["value"], r["topic"], r["partition"], r["offset"], r["ts"]) for r in rows
        )

    def process(
        self, records: Iterable[tuple[bytes | bytearray | None, str, int, int, int | None]]
    ) -> PartitionResult:
        """Parse, enrich and aggregate ``(value, topic, partition, offset, ts)`` records."""
        out = PartitionResult()
        started = time.perf_counter()
        events: list[Event] = []
        for value, topic, partition, offset, ts in records:
            out.rows += 1
            parsed = parse_record(value, self.project, topic, partition, offset, ts)
            if isinstance(parsed, DeadLetter):
                out.dead_letters.append(parsed)
            else:
                events.append(parsed)
        out.events = len(events)
        parsed_at = time.perf_counter()
        out.read_s = parsed_at - started

        plans = [GroupPlan.of(g) for g in self.groups]
        enriching = [p for p in plans if p.by_counters]
        items: ItemAttributes = {}
        if enriching:
            wanted = [e.item_id for e in events if any(p.needs_items(e) for p in enriching)]
            attributes = set().union(*(p.attributes() for p in enriching))
            items = lookup_items(self.settings, self.project, wanted, attributes)
            out.items_looked_up = len(set(wanted))
        looked_up_at = time.perf_counter()
        out.lookup_s = looked_up_at - parsed_at

        for plan in plans:
            updates = plan.updates(events, items)
            if updates:
                out.updates[plan.group.key] = updates
        out.aggregate_s = time.perf_counter() - looked_up_at
        return out


def kafka_records(batch: DataFrame) -> DataFrame:
    """The columns of a Kafka source micro-batch that ``PartitionProcessor`` reads."""
    return batch.select(
        "value", "topic", "partition", "offset", F.expr("unix_millis(timestamp)").alias("ts")
    )


def process_batch(batch: DataFrame, processor: PartitionProcessor) -> PartitionResult:
    """Run ``processor`` over every partition of a Kafka micro-batch and merge the results."""
    merged = PartitionResult()
    for partial in kafka_records(batch).rdd.mapPartitions(processor).collect():
        merged.merge(partial)
    return merged
