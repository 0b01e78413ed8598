"""The online mode: Kafka events → per-user counters in the online store, exactly once.

Spark Structured Streaming reads the project's topic; each micro-batch is aggregated
per user and applied through ``OnlineStore.apply_increments`` with the micro-batch id,
so a batch that Spark replays after a crash (written, but not yet committed to the
checkpoint) changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.naming import events_topic, online_collection
from twotier.online_store import OnlineStore, connect

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

USER_COUNTERS = "user_counters"
"""The feature group (online collection suffix) this job writes."""

COUNTER_FIELDS = ("views", "smiles", "dislikes", "rating_sum")
"""Fields of a ``user_counters`` document: counts of view/smile/dislike, sum of view values."""

DEFAULT_MAX_OFFSETS_PER_TRIGGER = 50_000

EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType()),
        StructField("project", StringType()),
        StructField("user_id", StringType()),
        StructField("item_id", StringType()),
        StructField("action", StringType()),
        StructField("value", DoubleType()),
        StructField("ts", LongType()),
        StructField("context", MapType(StringType(), StringType())),
    ]
)
"""The Spark schema of ``twotier.events.Event`` as JSON on Kafka."""


def _quiet(_: str) -> None:
    return None


def _say(progress: Progress, line: str) -> None:
    """Log ``line`` and hand it to ``progress``."""
    log.info(line)
    progress(line)


class OnlineJobError(TwotierError):
    """The streaming query failed; the message names the query, the cause and the fix."""


@dataclass
class OnlineRunStats:
    """What one ``run_online`` call processed (summed over its micro-batches)."""

    batches: int = 0
    input_rows: int = 0
    malformed_rows: int = 0
    documents: int = 0
    written: int = 0
    skipped: int = 0
    batch_ids: list[int] = field(default_factory=list)


def online_checkpoint(settings: Settings, project: str) -> Path:
    """The checkpoint folder of a project's online job."""
    return settings.data_dir / "checkpoints" / project / "online"


def batch_key_of(query_id: str) -> str:
    """The online-store writer key of a streaming query (its id survives restarts)."""
    return "online-" + query_id.replace("-", "")


def read_query_id(checkpoint: Path) -> str:
    """The streaming query id Spark stored in ``<checkpoint>/metadata``."""
    metadata = checkpoint / "metadata"
    try:
        return str(json.loads(metadata.read_text().splitlines()[0])["id"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise OnlineJobError(
            f"cannot read the query id from {metadata}: {exc}. Fix: delete the checkpoint "
            f"{checkpoint} only together with the online collection, then rerun"
        ) from exc


def parse_events(raw: DataFrame, project: str) -> DataFrame:
    """Kafka rows → ``user_id, action, value, ok`` (``ok`` is false for malformed rows).

    A row is malformed when it is not a JSON event, lacks ``user_id``, ``action`` or
    ``ts``, has a ``value`` that is not a number, or belongs to another project.
    """
    text = F.col("value").cast("string")
    event = F.from_json(text, EVENT_SCHEMA, {"mode": "PERMISSIVE"})
    parsed = raw.select(text.alias("raw"), event.alias("e"))
    value_ok = F.col("e.value").isNotNull() | F.get_json_object("raw", "$.value").isNull()
    ok: Column = (
        F.col("e").isNotNull()
        & F.col("e.user_id").isNotNull()
        & (F.length(F.trim("e.user_id")) > 0)
        & F.col("e.action").isNotNull()
        & F.col("e.ts").isNotNull()
        & value_ok
        & (F.col("e.project") == F.lit(project))
    )
    return parsed.select(
        F.trim("e.user_id").alias("user_id"),
        F.trim("e.action").alias("action"),
        F.coalesce(F.col("e.value"), F.lit(1.0)).alias("value"),
        F.coalesce(ok, F.lit(False)).alias("ok"),
    )


def user_counters(events: DataFrame) -> DataFrame:
    """Per user of a micro-batch: counters to add, plus one row (user ``null``) of malformed."""
    ok = F.col("ok")

    def count_of(action: str) -> Column:
        return F.sum(F.when(ok & (F.col("action") == action), 1).otherwise(0)).cast("long")

    return events.groupBy(F.when(ok, F.col("user_id")).alias("user_id")).agg(
        F.count(F.lit(1)).alias("rows"),
        count_of("view").alias("views"),
        count_of("smile").alias("smiles"),
        count_of("dislike").alias("dislikes"),
        F.sum(F.when(ok & (F.col("action") == "view"), F.col("value")).otherwise(0.0)).alias(
            "rating_sum"
        ),
    )


class _BatchWriter:
    """The ``foreachBatch`` function: aggregate, apply exactly once, log."""

    def __init__(
        self,
        store: OnlineStore,
        collection: str,
        checkpoint: Path,
        stats: OnlineRunStats,
        progress: Progress,
    ) -> None:
        self.store = store
        self.collection = collection
        self.checkpoint = checkpoint
        self.stats = stats
        self.progress = progress
        self._batch_key: str | None = None

    @property
    def batch_key(self) -> str:
        if self._batch_key is None:
            self._batch_key = batch_key_of(read_query_id(self.checkpoint))
        return self._batch_key

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        rows = user_counters(batch).collect()
        increments: dict[str, dict[str, Any]] = {}
        input_rows = malformed = 0
        for row in rows:
            input_rows += row["rows"]
            if row["user_id"] is None:
                malformed += row["rows"]
                continue
            counters = {name: row[name] for name in COUNTER_FIELDS if row[name]}
            if counters:
                increments[row["user_id"]] = counters
        result = self.store.apply_increments(
            self.collection, self.batch_key, int(batch_id), increments
        )
        stats = self.stats
        stats.batches += 1
        stats.batch_ids.append(int(batch_id))
        stats.input_rows += input_rows
        stats.malformed_rows += malformed
        stats.documents += result.documents
        stats.written += result.written
        stats.skipped += result.skipped
        line = (
            f"online batch {batch_id}: {input_rows} input rows, {malformed} malformed dropped, "
            f"{result.written} documents written, {result.skipped} already applied, "
            f"{time.monotonic() - started:.2f} s"
        )
        if malformed:
            log.warning(line)
        else:
            log.info(line)
        self.progress(line)


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside (main thread only; else never set).

    PySpark's own SIGINT handler makes a reentrant Py4J call while the driver waits
    on the query, which fails noisily; here a signal only asks the loop to stop.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, lambda *_: requested.set())
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(query: Any) -> bool:
    """Wait until the query ends (True: a stop was requested by a signal)."""
    with _stop_requests() as requested:
        while not requested.is_set():
            if query.awaitTermination(1):
                return False
    return True


def start_online_query(
    spark: SparkSession,
    settings: Settings,
    project: str,
    writer: Callable[[DataFrame, int], None],
    *,
    available_now: bool = False,
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER,
) -> Any:
    """Start the streaming query of ``project`` with ``writer`` as its ``foreachBatch``."""
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap)
        .option("subscribe", events_topic(project))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
        .load()
    )
    stream = (
        parse_events(raw, project)
        .writeStream.queryName(f"twotier_online_{project}")
        .option("checkpointLocation", str(online_checkpoint(settings, project)))
        .foreachBatch(writer)
    )
    if available_now:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=f"{settings.spark.trigger_seconds} seconds")
    return stream.start()


def run_online(
    settings: Settings,
    project: str,
    available_now: bool = False,
    progress: Progress = _quiet,
    *,
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER,
    spark: SparkSession | None = None,
) -> OnlineRunStats:
    """Run the online feature job of ``project`` until stopped (or, available-now, done).

    Args:
        settings: Kafka, online store, Spark and the data folder (checkpoints).
        project: Reads ``twotier.<project>.events``, writes ``<project>__user_counters``.
        available_now: Process everything in Kafka now, in micro-batches, then return.
        progress: Receives one line per micro-batch.
        max_offsets_per_trigger: At most this many Kafka records per micro-batch.
        spark: A session to use; by default one is started and stopped here.

    Returns:
        What this run processed.

    Raises:
        OnlineJobError: The streaming query failed (Kafka unreachable, store error, ...).
    """
    if max_offsets_per_trigger < 1:
        raise OnlineJobError(
            f"max_offsets_per_trigger is {max_offsets_per_trigger}: use a positive number"
        )
    from twotier.feature_jobs.session import spark_session

    own_session = spark is None
    session = spark or spark_session(settings, f"twotier-online-{project}")
    checkpoint = online_checkpoint(settings, project)
    checkpoint.mkdir(parents=True, exist_ok=True)
    collection = online_collection(project, USER_COUNTERS)
    stats = OnlineRunStats()
    store = connect(settings)
    try:
        store.ensure_indexes(collection)
        writer = _BatchWriter(store, collection, checkpoint, stats, progress)
        _say(
            progress,
            f"online job {project}: {events_topic(project)} → {collection} "
            f"(checkpoint {checkpoint})",
        )
        query = start_online_query(
            session,
            settings,
            project,
            writer,
            available_now=available_now,
            max_offsets_per_trigger=max_offsets_per_trigger,
        )
        try:
            if _wait(query):
                _say(progress, f"online job {project}: stopping after the current batch")
                query.stop()
        except Exception as exc:
            raise OnlineJobError(
                f"online job of {project!r} failed: {exc}. Fix the cause and rerun; "
                f"the checkpoint {checkpoint} resumes it without double counting"
            ) from exc
    finally:
        store.close()
        if own_session:
            session.stop()
    _say(
        progress,
        f"online job {project}: {stats.batches} batches, {stats.input_rows} rows, "
        f"{stats.malformed_rows} malformed, {stats.written} documents written",
    )
    return stats
