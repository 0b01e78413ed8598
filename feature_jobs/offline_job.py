"""The offline mode: a Kafka offset range → the offline store's events and feature snapshots.

A Spark batch read of the project's topic over ``[start, end)`` per partition (default:
the earliest offsets to the end offsets at start). Executors validate every record with
``twotier.events.parse_event``, the same check every consumer uses; malformed records go
to the dead-letter topic and are counted. The driver streams the parsed rows in chunks
into the offline store (embedded chdb lives in the driver process and holds its
single-process lock for the whole run), records the loaded range and every event's
offset (``feature_jobs.offsets``), and brings the feature snapshot tables up to date
with ``twotier.features.offline.materialize_all_snapshots``, the SQL training reads.

Loading is idempotent by ``event_id`` and ranges are recorded once, so running the job
twice over the same range changes nothing; dead letters of a range loaded before are
counted but not published again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from twotier.config import Settings
from twotier.dead_letter import DeadLetters
from twotier.errors import TwotierError
from twotier.events import BadEvent, parse_event
from twotier.feature_jobs.offsets import (
    EVENT_OFFSETS,
    OffsetRange,
    Offsets,
    ensure_offset_tables,
    loaded_ranges,
    record_ranges,
    topic_offsets,
)
from twotier.features.offline import materialize_all_snapshots
from twotier.naming import events_topic
from twotier.offline_store import EVENT_COLUMNS, open_offline_store
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)


DEFAULT_CHUNK_ROWS = 20_000
"""Parsed records per insert into the offline store."""


class OfflineJobError(TwotierError):
    """The offline job cannot run as asked; the message names the value and the fix."""


@dataclass
class OfflineRunStats:
    """What one ``run_offline`` call did.

    Attributes:
        topic: The topic read.
        ranges: The offset ranges read, per partition ``(start, end)``.
        records: Kafka records read.
        events: Valid events among them.
        inserted: Events new to the offline store (0 on a rerun).
        malformed: Malformed records (dead-lettered), per reason.
        snapshots: Snapshot rows written per feature group key (empty: not rebuilt).
        seconds: Wall time.
    """

    topic: str
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    records: int = 0
    events: int = 0
    inserted: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    snapshots: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "topic": self.topic,
            "ranges": {str(p): list(r) for p, r in self.ranges.items()},
            "records": self.records,
            "events": self.events,
            "inserted": self.inserted,
            "malformed": self.malformed,
            "snapshots": self.snapshots,
            "seconds": round(self.seconds, 3),
        }


def _say(progress: Progress, line: str) -> None:
    log.info(line)
    progress(line)


def plan_ranges(
    topic: str,
    begin: Offsets,
    end: Offsets,
    start_offsets: Offsets | None = None,
    end_offsets: Offsets | None = None,
) -> list[OffsetRange]:
    """The per-partition ranges to read: defaults are the topic's beginning and end.

    Args:
        topic: The topic.
        begin: Per partition, its earliest available offset.
        end: Per partition, its end offset (exclusive).
        start_offsets: Per partition, where to start (partitions left out: ``begin``).
        end_offsets: Per partition, where to stop, exclusive (left out: ``end``).

    Returns:
        Non-empty ranges, sorted by partition.

    Raises:
        OfflineJobError: An unknown partition, or an offset outside the available range.
    """
    for name, given in (("start", start_offsets or {}), ("end", end_offsets or {})):
        unknown = sorted(set(given) - set(end))
        if unknown:
            raise OfflineJobError(
                f"{name} offsets name partition(s) {unknown} that {topic} does not have "
                f"(partitions: {sorted(end)})"
            )
    ranges = []
    for p in sorted(end):
        start = (start_offsets or {}).get(p, begin[p])
        stop = (end_offsets or {}).get(p, end[p])
        if not begin[p] <= start <= stop <= end[p]:
            raise OfflineJobError(
                f"{topic} partition {p}: range [{start}, {stop}) is not within the available "
                f"offsets [{begin[p]}, {end[p]}): use start <= end inside that range"
            )
        if stop > start:
            ranges.append(OffsetRange(topic, p, start, stop))
    return ranges


def parse_records(project: str, rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Validate Kafka rows (``value, partition, offset, timestamp``) as events of ``project``.

    Runs on the executors (``mapPartitions``). Yields ``(partition, offset, ts_ms,
    event_dict | None, reason | None, detail | None, raw)`` per row.
    """
    known = (project,)
    for row in rows:
        value, partition, offset, timestamp = row[0], int(row[1]), int(row[2]), row[3]
        ts = int(timestamp.timestamp() * 1000) if timestamp is not None else None
        raw = bytes(value) if value is not None else None
        try:
            if raw is None:
                raise BadEvent("empty message (tombstone)", "bad_json")
            event = parse_event(raw, known)
        except BadEvent as bad:
            yield (partition, offset, ts, None, bad.kind, bad.reason, raw)
        else:
            yield (partition, offset, ts, event.model_dump(), None, None, None)


def read_range(
    spark: SparkSession, settings: Settings, project: str, ranges: list[OffsetRange]
) -> Iterator[tuple[Any, ...]]:
    """The parsed records of ``ranges`` (``parse_records`` tuples), streamed to the driver."""
    topic = events_topic(project)
    assign = {topic: [r.partition for r in ranges]}
    starting = {topic: {str(r.partition): r.start for r in ranges}}
    ending = {topic: {str(r.partition): r.end for r in ranges}}
    raw = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap)
        .option("assign", json.dumps(assign))
        .option("startingOffsets", json.dumps(starting))
        .option("endingOffsets", json.dumps(ending))
        .option("failOnDataLoss", "true")
        .load()
        .select("value", "partition", "offset", "timestamp")
    )
    parsed = raw.rdd.mapPartitions(lambda rows: parse_records(project, rows))
    return parsed.toLocalIterator(prefetchPartitions=True)


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_offline(
    settings: Settings,
    project: str,
    start_offsets: Offsets | None = None,
    end_offsets: Offsets | None = None,
    progress: Progress = quiet,
    *,
    spark: SparkSession | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    publish_dead_letters: bool = True,
) -> OfflineRunStats:
    """Load a Kafka offset range of ``project`` into the offline store; rebuild snapshots.

    Args:
        settings: Kafka, the offline store, Spark and the project's feature groups.
        project: Reads ``twotier.<project>.events``; writes ``<project>__events``,
            ``<project>__<group>_v<n>`` snapshots, ``<project>__loaded_offsets`` and
            ``<project>__event_offsets``.
        start_offsets: Per partition, the first offset to read (default: earliest).
        end_offsets: Per partition, the offset to stop before (default: the end offset
            when the job starts).
        progress: Receives one line per step.
        spark: A session to use; by default one is started and stopped here.
        chunk_rows: Records per insert into the offline store.
        publish_dead_letters: Send malformed records to the dead-letter topic (they are
            counted either way); records of ranges loaded before are never re-sent.

    Returns:
        What was read, inserted and dead-lettered.

    Raises:
        OfflineJobError: Bad offsets or chunk size.
        OffsetsError: The topic does not exist.
        OfflineStoreError: The offline store refused or stayed locked.
        TwotierError: Kafka is unreachable.
    """
    if chunk_rows < 1:
        raise OfflineJobError(f"chunk_rows is {chunk_rows}: use a positive number")
    started = time.monotonic()
    topic = events_topic(project)
    settings.project_features(project)  # unknown project: a clear error before any work
    begin, end = topic_offsets(settings, topic)
    ranges = plan_ranges(topic, begin, end, start_offsets, end_offsets)
    stats = OfflineRunStats(topic, {r.partition: (r.start, r.end) for r in ranges})
    _say(
        progress,
        f"offline job {project}: {topic} "
        + (", ".join(f"p{r.partition}[{r.start}, {r.end})" for r in ranges) or "nothing to read"),
    )
    own_session = spark is None and bool(ranges)
    session = spark
    if own_session:
        from twotier.feature_jobs.session import spark_session

        session = spark_session(settings, f"twotier-offline-{project}")
    try:
        with open_offline_store(settings) as store:
            store.ensure_tables(project)
            ensure_offset_tables(store, project)
            seen_before = loaded_ranges(store, project, topic)
            counts: dict[int, list[int]] = {r.partition: [0, 0] for r in ranges}
            with DeadLetters(settings, project, publish=publish_dead_letters) as dead:
                quiet = DeadLetters(settings, project, publish=False)
                rows: Iterator[tuple[Any, ...]] = iter(())
                if ranges and session is not None:
                    rows = read_range(session, settings, project, ranges)
                for chunk in _chunks(rows, chunk_rows):
                    events: list[dict[str, Any]] = []
                    positions: list[tuple[int, int, str]] = []
                    for partition, offset, ts, event, kind, detail, raw in chunk:
                        stats.records += 1
                        if event is None:
                            counts[partition][1] += 1
                            again = any(
                                r.partition == partition and offset in r for r in seen_before
                            )
                            (quiet if again else dead).dead_letter(
                                BadEvent(detail, kind), raw, topic, partition, offset, ts
                            )
                            continue
                        counts[partition][0] += 1
                        events.append(event)
                        positions.append((partition, offset, event["event_id"]))
                    stats.events += len(events)
                    if events:
                        frame = pd.DataFrame(events, columns=["project", *EVENT_COLUMNS])
                        stats.inserted += store.insert_events(project, frame)
                        store.insert_frame(
                            store.table(project, EVENT_OFFSETS),
                            pd.DataFrame(
                                {
                                    "topic": topic,
                                    "partition": [p for p, _, _ in positions],
                                    "offset": [o for _, o, _ in positions],
                                    "event_id": [e for _, _, e in positions],
                                }
                            ),
                        )
                    _say(
                        progress,
                        f"offline job {project}: {stats.records} records read, "
                        f"{stats.inserted} new events",
                    )
                stats.malformed = dead.counts()
                for reason, n in quiet.counts().items():
                    stats.malformed[reason] = stats.malformed.get(reason, 0) + n
            record_ranges(store, project, ranges, {p: (c[0], c[1]) for p, c in counts.items()})
            stats.snapshots = _refresh_snapshots(store, settings, project, stats, progress)
    finally:
        if own_session and session is not None:
            session.stop()
    stats.seconds = time.monotonic() - started
    _say(
        progress,
        f"offline job {project}: {stats.records} records, {stats.events} events "
        f"({stats.inserted} new), {stats.malformed_total} malformed, "
        f"{stats.seconds:.1f} s",
    )
    return stats


def _refresh_snapshots(
    store: Any, settings: Settings, project: str, stats: OfflineRunStats, progress: Progress
) -> dict[str, int]:
    """Rebuild the snapshot tables when events were added or a table is missing."""
    groups = [
        g for g in settings.project_features(project).feature_groups if g.from_events(offline=True)
    ]
    missing = [g.key for g in groups if not store.has_table(project, g.key)]
    if not groups or (stats.inserted == 0 and not missing):
        return {}
    _say(progress, f"offline job {project}: rebuilding snapshots of {[g.key for g in groups]}")
    return materialize_all_snapshots(store, settings, project)
