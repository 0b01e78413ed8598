"""Kafka offsets the batch modes agree on: what the offline store holds, where online starts.

* The **offline** mode records every offset range it loaded in the offline table
  ``<project>__loaded_offsets`` and the (partition, offset) of every event in
  ``<project>__event_offsets``, so the history it holds is known exactly.
* The **import** mode turns that history into online documents and leaves a handoff
  document for the online job, in the online collection ``<project>__jobs``::

      {"_id": "online_start_offsets", "topic": "twotier.memes.events",
       "offsets": {"0": 5120, "1": 4980}, "groups": ["user_stats_v1"], "ts": 1700000000000}

  ``offsets`` are, per partition, the next offset the import did *not* cover. An online
  job starting on a new checkpoint reads them (``read_start_offsets``) and starts there,
  so no event is counted twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.naming import online_collection
from twotier.offline_store import OfflineStore
from twotier.online_store import OnlineStore

LOADED_OFFSETS = "loaded_offsets"
"""Offline table of the Kafka offset ranges the offline mode loaded."""

EVENT_OFFSETS = "event_offsets"
"""Offline table mapping every loaded event to its Kafka partition and offset."""

JOBS_COLLECTION = "jobs"
"""Online collection suffix of the feature jobs' bookkeeping documents."""

HANDOFF_ID = "online_start_offsets"
"""``_id`` of the import → online handoff document in the jobs collection."""

LOADED_OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS {table}
(
    topic String,
    partition Int32,
    start_offset Int64 COMMENT 'first offset read',
    end_offset Int64 COMMENT 'next offset after the range (exclusive)',
    events UInt64 COMMENT 'valid events read in the range',
    malformed UInt64 COMMENT 'malformed records in the range (dead-lettered)',
    loaded_ms Int64
)
ENGINE = ReplacingMergeTree(loaded_ms)
ORDER BY (topic, partition, start_offset, end_offset)
COMMENT 'twotier: Kafka offset ranges loaded by the offline feature job (read with FINAL)'
"""

EVENT_OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS {table}
(
    topic String,
    partition Int32,
    offset Int64,
    event_id String
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset)
COMMENT 'twotier: the Kafka position of every event loaded by the offline feature job'
"""


class OffsetsError(TwotierError):
    """Offsets are missing, out of range or not contiguous; the message names the fix."""


Offsets = dict[int, int]
"""Per partition, an offset."""


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one partition of a topic."""

    topic: str
    partition: int
    start: int
    end: int

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.end


@dataclass(frozen=True)
class StartOffsets:
    """The handoff document: where the online job starts after an import."""

    topic: str
    offsets: Offsets
    groups: list[str] = field(default_factory=list)
    ts: int = 0

    def spark_json(self) -> str:
        """The offsets as Spark's ``startingOffsets`` option value."""
        return json.dumps({self.topic: {str(p): o for p, o in sorted(self.offsets.items())}})


# -- Kafka -----------------------------------------------------------------------


def topic_offsets(settings: Settings, topic: str) -> tuple[Offsets, Offsets]:
    """The beginning and end offsets of every partition of ``topic`` (end is exclusive).

    Raises:
        OffsetsError: The topic does not exist.
        TwotierError: Kafka is unreachable.
    """
    from kafka.errors import KafkaError

    from twotier.kafka_clients import kafka_error, make_consumer, topic_partitions

    consumer = make_consumer(settings, "twotier-offsets")
    try:
        tps = topic_partitions(consumer, topic)
        if not tps:
            raise OffsetsError(
                f"kafka topic {topic!r} does not exist at {settings.kafka.bootstrap}: produce "
                "events first (`twotier replay` / `twotier generate`) or check --project"
            )
        begin = {tp.partition: int(o) for tp, o in consumer.beginning_offsets(tps).items()}
        end = {tp.partition: int(o) for tp, o in consumer.end_offsets(tps).items()}
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        consumer.close()
    return begin, end


# -- offline: what was loaded ----------------------------------------------------


def ensure_offset_tables(store: OfflineStore, project: str) -> None:
    """Create ``loaded_offsets`` and ``event_offsets`` of ``project``; idempotent."""
    store.command(LOADED_OFFSETS_DDL.format(table=store.table(project, LOADED_OFFSETS)))
    store.command(EVENT_OFFSETS_DDL.format(table=store.table(project, EVENT_OFFSETS)))


def record_ranges(
    store: OfflineStore,
    project: str,
    ranges: list[OffsetRange],
    counts: Mapping[int, tuple[int, int]],
) -> None:
    """Record loaded ranges with, per partition, (valid events, malformed records)."""
    if not ranges:
        return
    now = time.time_ns() // 1_000_000
    frame = pd.DataFrame(
        {
            "topic": [r.topic for r in ranges],
            "partition": [r.partition for r in ranges],
            "start_offset": [r.start for r in ranges],
            "end_offset": [r.end for r in ranges],
            "events": [counts.get(r.partition, (0, 0))[0] for r in ranges],
            "malformed": [counts.get(r.partition, (0, 0))[1] for r in ranges],
            "loaded_ms": [now] * len(ranges),
        }
    )
    store.insert_frame(store.table(project, LOADED_OFFSETS), frame)


def loaded_ranges(store: OfflineStore, project: str, topic: str) -> list[OffsetRange]:
    """Every range of ``topic`` the offline mode loaded, sorted by partition and start."""
    if not store.has_table(project, LOADED_OFFSETS):
        return []
    frame = store.query_df(
        f"SELECT DISTINCT partition, start_offset, end_offset "
        f"FROM {store.table(project, LOADED_OFFSETS)} FINAL WHERE topic = {{topic:String}} "
        "ORDER BY partition, start_offset, end_offset",
        {"topic": topic},
    )
    if frame.empty:  # an empty result may come back without columns
        return []
    return [
        OffsetRange(topic, int(p), int(s), int(e))
        for p, s, e in zip(
            frame["partition"], frame["start_offset"], frame["end_offset"], strict=True
        )
    ]


def covered_offsets(ranges: list[OffsetRange]) -> tuple[Offsets, Offsets]:
    """Per partition, the first offset and the end of the contiguous history loaded.

    Raises:
        OffsetsError: A partition's ranges leave a gap (the message names it).
    """
    starts: Offsets = {}
    ends: Offsets = {}
    for r in sorted(ranges, key=lambda r: (r.partition, r.start)):
        if r.partition not in ends:
            starts[r.partition], ends[r.partition] = r.start, r.end
        elif r.start > ends[r.partition]:
            raise OffsetsError(
                f"the offline store holds {r.topic} partition {r.partition} up to offset "
                f"{ends[r.partition]}, then again from {r.start}: load the gap first "
                f"(twotier batch offline --project ... --start {r.partition}:"
                f"{ends[r.partition]} --end {r.partition}:{r.start})"
            )
        else:
            ends[r.partition] = max(ends[r.partition], r.end)
    return starts, ends


# -- online: the handoff ------------------------------------------------------------


def jobs_collection(project: str) -> str:
    """The online collection of the feature jobs' bookkeeping documents."""
    return online_collection(project, JOBS_COLLECTION)


def write_start_offsets(store: OnlineStore, project: str, start: StartOffsets) -> None:
    """Store the import → online handoff document of ``project``."""
    doc: dict[str, Any] = {
        "topic": start.topic,
        "offsets": {str(p): int(o) for p, o in sorted(start.offsets.items())},
        "groups": list(start.groups),
        "ts": int(start.ts),
    }
    store.put_document(jobs_collection(project), HANDOFF_ID, doc)


def read_start_offsets(store: OnlineStore, project: str) -> StartOffsets | None:
    """The handoff document left by an import, or None when there was no import.

    The online job calls this when it starts on a new checkpoint: with a document, it
    reads from ``offsets`` (``StartOffsets.spark_json()``) instead of ``earliest``.

    Raises:
        OffsetsError: The document exists but is malformed.
    """
    doc = store.get_document(jobs_collection(project), HANDOFF_ID)
    if doc is None:
        return None
    try:
        return StartOffsets(
            topic=str(doc["topic"]),
            offsets={int(p): int(o) for p, o in dict(doc["offsets"]).items()},
            groups=[str(g) for g in doc.get("groups", [])],
            ts=int(doc.get("ts", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OffsetsError(
            f"handoff document {HANDOFF_ID!r} in {jobs_collection(project)!r} is malformed "
            f"({exc}): {doc!r}. Fix: rerun `twotier batch import --project {project}`"
        ) from exc
