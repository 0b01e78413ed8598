"""The online mode: Kafka events → every online feature group of a project, exactly once.

Spark Structured Streaming reads the project's topic. Each micro-batch is parsed,
enriched with item attributes and aggregated per (feature group, entity) where the
records are (``feature_jobs.micro_batch``), then applied in ``foreachBatch`` through
``OnlineStore.apply_increments`` under the query's batch key and the micro-batch id. A
batch that Spark replays after a crash (written, but not yet committed to the
checkpoint) is a no-op the second time, so counters are exactly once.

Malformed records go to the project's dead-letter topic and are counted. A missing
topic, an unreachable Kafka or online store, or a failed micro-batch is logged as one
error line and retried with bounded exponential backoff (``Backoff``), restarting from
the checkpoint. After every batch, ``feature_jobs.status`` writes
``<data_dir>/jobs/<project>/online.json`` and logs the same facts.

Test hook: with ``TWOTIER_FAULT_AFTER_WRITE=<batch id>`` the process SIGKILLs itself right
after that batch's online write and before Spark commits it (the exactly-once tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from twotier.config import ConfigError, Settings
from twotier.dead_letter import DeadLetters
from twotier.errors import TwotierError
from twotier.feature_jobs.backoff import Backoff
from twotier.feature_jobs.micro_batch import PartitionProcessor, online_groups, process_batch
from twotier.feature_jobs.status import (
    KafkaOffsets,
    lag_of,
    processed_offsets,
    read_status,
    status_line,
    write_status,
)
from twotier.features.spec import FeatureGroup
from twotier.naming import events_topic, online_collection
from twotier.online_store import OnlineStore, OnlineStoreError, connect
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)


DEFAULT_MAX_OFFSETS_PER_TRIGGER = 50_000

FAULT_AFTER_WRITE_ENV = "TWOTIER_FAULT_AFTER_WRITE"
"""Test-only: the micro-batch id after whose online write the job SIGKILLs itself."""

AVAILABLE_NOW_ATTEMPTS = 3
"""Failures in a row after which an ``--available-now`` run gives up (continuous: never)."""


def _say(progress: Progress, line: str, level: int = logging.INFO) -> None:
    """Log ``line`` and hand it to ``progress``."""
    log.log(level, line)
    progress(line)


class OnlineJobError(TwotierError):
    """The online job cannot run; the message names the cause and the fix."""


class _Retryable(Exception):
    """A fault the job waits out (missing topic, Kafka or store down, failed batch)."""


@dataclass
class OnlineRunStats:
    """What one ``run_online`` call processed (summed over its micro-batches).

    ``malformed_rows`` counts the dead letters; ``dead_letters`` splits them by reason.
    ``documents``, ``written`` and ``skipped`` add up every group's ``ApplyResult``.
    """

    batches: int = 0
    input_rows: int = 0
    malformed_rows: int = 0
    documents: int = 0
    written: int = 0
    skipped: int = 0
    batch_ids: list[int] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    retries: int = 0


def online_backoff(
    initial_s: float = 1.0,
    max_s: float = 30.0,
    attempts: int | None = None,
    available_now: bool = False,
) -> Backoff:
    """The online job's retry policy (doubling waits from ``initial_s`` up to ``max_s``).

    Args:
        initial_s: The first wait.
        max_s: The longest wait.
        attempts: Give up after this many faults in a row; ``None`` means never, except
            available-now (3); ``0`` means never.
        available_now: The run processes what is in Kafka, then stops.

    Raises:
        OnlineJobError: The numbers make no policy (the message says which).
    """
    if attempts is None and available_now:
        attempts = AVAILABLE_NOW_ATTEMPTS
    try:
        return Backoff(initial_s=initial_s, max_s=max_s, max_attempts=attempts or None)
    except ValueError as exc:
        raise OnlineJobError(f"retry options: {exc}") from exc


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
            f"{checkpoint} only together with the online collections, then rerun"
        ) from exc


def _fault_after_write() -> int | None:
    value = os.environ.get(FAULT_AFTER_WRITE_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise OnlineJobError(
            f"{FAULT_AFTER_WRITE_ENV}={value!r} is not a batch id: unset it (test-only hook)"
        ) from None


class _BatchWriter:
    """The ``foreachBatch`` function: aggregate, dead-letter, apply exactly once, report."""

    def __init__(
        self,
        settings: Settings,
        project: str,
        groups: list[FeatureGroup],
        store: OnlineStore,
        checkpoint: Path,
        stats: OnlineRunStats,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.project = project
        self.groups = groups
        self.store = store
        self.checkpoint = checkpoint
        self.stats = stats
        self.progress = progress
        self.processor = PartitionProcessor(settings, project, groups)
        self.dead = DeadLetters(settings, project)
        self.offsets = KafkaOffsets(settings)
        self.fault_after_write = _fault_after_write()
        self._writers = ThreadPoolExecutor(max(1, len(groups)), "twotier-online-write")
        self._batch_key: str | None = None

    @property
    def batch_key(self) -> str:
        if self._batch_key is None:
            self._batch_key = batch_key_of(read_query_id(self.checkpoint))
        return self._batch_key

    def close(self) -> None:
        self._writers.shutdown(wait=True)
        self.offsets.close()
        with contextlib.suppress(TwotierError):
            self.dead.close()

    def _write_groups(self, result: Any, batch_id: int) -> dict[str, dict[str, float]]:
        """Apply every group's updates, the groups concurrently (one collection each).

        Each group is its own exactly-once write under (batch key, batch id), so their
        order does not matter; overlapping them hides one round trip per group.
        """

        def write(group: FeatureGroup) -> tuple[str, dict[str, float]] | None:
            updates = result.updates.get(group.key)
            if not updates:
                return None
            began = time.perf_counter()
            applied = self.store.apply_increments(
                online_collection(self.project, group.key),
                self.batch_key,
                batch_id,
                updates.increments,
                updates.maxima,
            )
            return group.key, {
                "documents": applied.documents,
                "written": applied.written,
                "skipped": applied.skipped,
                "write_s": round(time.perf_counter() - began, 4),
            }

        done = [r for r in self._writers.map(write, self.groups) if r is not None]
        return dict(done)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        batch_id = int(batch_id)
        started = time.perf_counter()
        result = process_batch(batch, self.processor)
        computed = time.perf_counter()

        for letter in result.dead_letters:
            self.dead.dead_letter(
                letter.error(),
                letter.raw,
                letter.topic,
                letter.partition,
                letter.offset,
                letter.ts,
            )
        self.dead.flush()
        groups = self._write_groups(result, batch_id)
        written_at = time.perf_counter()
        if self.fault_after_write == batch_id:
            print(
                f"fault injection: SIGKILL after the online write of batch {batch_id}, "
                "before its checkpoint commit",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGKILL)

        worker_s = result.lookup_s + result.aggregate_s
        status: dict[str, Any] = {
            "project": self.project,
            "mode": "online",
            "state": "running",
            "query_id": self.batch_key,
            "batch_id": batch_id,
            "input_rows": result.rows,
            "events": result.events,
            "dead_letters": len(result.dead_letters),
            "dead_letter_reasons": result.dead_letter_counts(),
            "documents": int(sum(g["documents"] for g in groups.values())),
            "written": int(sum(g["written"] for g in groups.values())),
            "skipped": int(sum(g["skipped"] for g in groups.values())),
            "groups": groups,
            "items_looked_up": result.items_looked_up,
            "duration_s": round(written_at - started, 4),
            "read_s": round(max(0.0, computed - started - worker_s), 4),
            "aggregate_s": round(worker_s, 4),
            "write_s": round(written_at - computed, 4),
            "error": None,
        }
        status |= self._lag(batch_id)
        write_status(self.settings, self.project, status)
        self._count(batch_id, status)
        level = logging.WARNING if result.dead_letters else logging.INFO
        _say(self.progress, status_line(status), level)

    def _lag(self, batch_id: int) -> dict[str, Any]:
        processed = processed_offsets(self.checkpoint, batch_id)
        try:
            end = self.offsets.end_offsets(events_topic(self.project))
        except Exception as exc:  # lag is best effort: Kafka may be restarting
            log.debug("no Kafka end offsets for the lag: %s", exc)
            self.offsets.close()
            return {"lag": None, "processed_offsets": _keys(processed)}
        lag = lag_of(end, processed)
        return {
            "lag": sum(lag.values()),
            "lag_by_partition": _keys(lag),
            "end_offsets": _keys(end),
            "processed_offsets": _keys(processed),
        }

    def _count(self, batch_id: int, status: dict[str, Any]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.batch_ids.append(batch_id)
        stats.input_rows += status["input_rows"]
        stats.malformed_rows += status["dead_letters"]
        stats.documents += status["documents"]
        stats.written += status["written"]
        stats.skipped += status["skipped"]
        for reason, n in status["dead_letter_reasons"].items():
            stats.dead_letters[reason] = stats.dead_letters.get(reason, 0) + n


def _keys(offsets: dict[int, int]) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}


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


_PY_ERROR = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit)):\s*(.+)$")


def failure_summary(exc: BaseException) -> str:
    """One line for a failed query: the innermost Python error when there is one."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    found = [m for m in (_PY_ERROR.match(line) for line in lines) if m]
    if found:
        return f"{found[-1].group(1)}: {found[-1].group(2).strip()}"
    return (lines[0] if lines else type(exc).__name__)[:500]


def starting_offsets(
    store: OnlineStore, project: str, checkpoint: Path, partitions: set[int]
) -> str:
    """Where a query starts: ``earliest``, or after an import's history on a new checkpoint.

    An existing checkpoint always wins (Spark ignores ``startingOffsets`` then). On a new
    one, the import handoff (``feature_jobs.offsets.read_start_offsets``) gives per
    partition the first offset the import did not count; partitions it does not name
    start at the earliest offset.
    """
    if (checkpoint / "offsets").is_dir() and any((checkpoint / "offsets").iterdir()):
        return "earliest"
    from twotier.feature_jobs.offsets import OffsetsError, read_start_offsets

    try:
        start = read_start_offsets(store, project)
    except OffsetsError as exc:
        raise OnlineJobError(str(exc)) from exc
    if start is None or start.topic != events_topic(project):
        return "earliest"
    offsets = {str(p): start.offsets.get(p, -2) for p in sorted(partitions | set(start.offsets))}
    return json.dumps({start.topic: offsets})


def start_online_query(
    spark: SparkSession,
    settings: Settings,
    project: str,
    writer: Callable[[DataFrame, int], None],
    *,
    available_now: bool = False,
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER,
    trigger_seconds: float | None = None,
    start: str = "earliest",
) -> Any:
    """Start the streaming query of ``project`` with ``writer`` as its ``foreachBatch``.

    Args:
        spark: The session (the Kafka connector on its classpath).
        settings: Kafka, the data folder (checkpoint) and ``spark.trigger_seconds``.
        project: Reads ``naming.events_topic(project)``.
        writer: Called with each micro-batch of raw Kafka rows and its id.
        available_now: Process what is in Kafka now, then stop.
        max_offsets_per_trigger: At most this many Kafka records per micro-batch.
        trigger_seconds: Micro-batch interval (default ``settings.spark.trigger_seconds``).
        start: ``startingOffsets`` for a new checkpoint (see ``starting_offsets``).
    """
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap)
        .option("subscribe", events_topic(project))
        .option("startingOffsets", start)
        .option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
        .option("failOnDataLoss", "true")
        .load()
    )
    stream = (
        raw.writeStream.queryName(f"twotier_online_{project}")
        .option("checkpointLocation", str(online_checkpoint(settings, project)))
        .foreachBatch(writer)
    )
    if available_now:
        stream = stream.trigger(availableNow=True)
    else:
        seconds = trigger_seconds or settings.spark.trigger_seconds
        stream = stream.trigger(processingTime=f"{seconds} seconds")
    return stream.start()


def _preflight(
    settings: Settings, project: str, store: OnlineStore, groups: list[FeatureGroup]
) -> set[int]:
    """Check the topic exists and the store answers; returns the topic's partitions."""
    topic = events_topic(project)
    offsets = KafkaOffsets(settings)
    try:
        partitions = offsets.partitions(topic)
    except Exception as exc:
        raise _Retryable(
            f"kafka at {settings.kafka.bootstrap} unreachable ({type(exc).__name__}: {exc}). "
            "Fix: start the stack (`twotier up`) or set kafka.bootstrap_servers"
        ) from exc
    finally:
        offsets.close()
    if partitions is None:
        raise _Retryable(
            f"kafka topic {topic} does not exist at {settings.kafka.bootstrap}. Fix: produce "
            f"events (`twotier replay --project {project}` / `twotier generate`) or create it"
        )
    try:
        for group in groups:
            store.ensure_indexes(online_collection(project, group.key))
    except OnlineStoreError as exc:
        raise _Retryable(f"online store at {settings.online_store_uri}: {exc}") from exc
    return partitions


def run_online(
    settings: Settings,
    project: str,
    available_now: bool = False,
    progress: Progress = quiet,
    *,
    max_offsets_per_trigger: int = DEFAULT_MAX_OFFSETS_PER_TRIGGER,
    spark: SparkSession | None = None,
    retry: Backoff | None = None,
    trigger_seconds: float | None = None,
) -> OnlineRunStats:
    """Run the online feature job of ``project`` until stopped (or, available-now, done).

    Args:
        settings: Kafka, online store, Spark, the project's feature groups, the data
            folder (checkpoints and the status file).
        project: Reads ``twotier.<project>.events``; writes ``<project>__<group key>`` for
            every online feature group.
        available_now: Process everything in Kafka now, in micro-batches, then return.
        progress: Receives one line per micro-batch and per fault.
        max_offsets_per_trigger: At most this many Kafka records per micro-batch.
        spark: A session to use; by default one is started and stopped here.
        retry: Backoff after a fault (missing topic, Kafka or store down, failed batch);
            default: 1 s doubling to 30 s, forever, or 3 failures in a row available-now.
        trigger_seconds: Micro-batch interval (default ``settings.spark.trigger_seconds``).

    Returns:
        What this run processed.

    Raises:
        OnlineJobError: Invalid arguments, an undeclared project, or ``retry`` gave up.
    """
    if max_offsets_per_trigger < 1:
        raise OnlineJobError(
            f"max_offsets_per_trigger is {max_offsets_per_trigger}: use a positive number"
        )
    if trigger_seconds is not None and trigger_seconds <= 0:
        raise OnlineJobError(f"trigger_seconds is {trigger_seconds}: use a positive number")
    try:
        groups = online_groups(settings, project)
    except ConfigError as exc:
        raise OnlineJobError(str(exc)) from exc
    if not groups:
        raise OnlineJobError(
            f"project {project!r} has no online feature group: declare one with `online: true` "
            "under projects.<name>.feature_groups in twotier.yaml"
        )
    retry = retry or online_backoff(available_now=available_now)
    from twotier.feature_jobs.session import spark_session

    own_session = spark is None
    session = spark or spark_session(settings, f"twotier-online-{project}")
    checkpoint = online_checkpoint(settings, project)
    checkpoint.mkdir(parents=True, exist_ok=True)
    stats = OnlineRunStats()
    store = connect(settings)
    writer = _BatchWriter(settings, project, groups, store, checkpoint, stats, progress)
    collections = ", ".join(online_collection(project, g.key) for g in groups)
    _say(
        progress,
        f"online job {project}: {events_topic(project)} → {collections} (checkpoint {checkpoint})",
    )
    failures = 0
    try:
        with _stop_requests() as stop:
            while not stop.is_set():
                batches_before = stats.batches
                try:
                    partitions = _preflight(settings, project, store, groups)
                    start = starting_offsets(store, project, checkpoint, partitions)
                    query = start_online_query(
                        session,
                        settings,
                        project,
                        writer,
                        available_now=available_now,
                        max_offsets_per_trigger=max_offsets_per_trigger,
                        trigger_seconds=trigger_seconds,
                        start=start,
                    )
                    _wait(query, stop, progress, project)
                    break
                except _Retryable as exc:
                    failures = 1 if stats.batches > batches_before else failures + 1
                    message = str(exc)
                except Exception as exc:  # a failed micro-batch ends the query
                    if not _is_query_failure(exc):
                        raise
                    failures = 1 if stats.batches > batches_before else failures + 1
                    message = f"micro-batch failed: {failure_summary(exc)}"
                stats.retries += 1
                if retry.gives_up(failures):
                    _report_fault(settings, project, message, None, failures)
                    raise OnlineJobError(
                        f"online job of {project!r} gave up after {failures} failures in a row: "
                        f"{message}. The checkpoint {checkpoint} resumes it without double "
                        "counting once the cause is fixed"
                    )
                delay = retry.delay(failures)
                _report_fault(settings, project, message, delay, failures)
                _say(
                    progress,
                    f"online job {project}: {message}; retrying in {delay:.0f} s "
                    f"(failure {failures} in a row)",
                    logging.ERROR,
                )
                stop.wait(delay)
    finally:
        writer.close()
        store.close()
        if own_session:
            session.stop()
    last = read_status(settings, project) or {"project": project, "mode": "online"}
    if last.get("state") != "failed":
        write_status(settings, project, {**last, "state": "stopped"})
    _say(
        progress,
        f"online job {project}: {stats.batches} batches, {stats.input_rows} rows, "
        f"{stats.malformed_rows} dead letters, {stats.written} documents written",
    )
    return stats


def _is_query_failure(exc: Exception) -> bool:
    """True for Spark's ``StreamingQueryException`` (a failed micro-batch or source)."""
    from pyspark.errors import StreamingQueryException

    return isinstance(exc, StreamingQueryException)


def _report_fault(
    settings: Settings, project: str, message: str, delay: float | None, failures: int
) -> None:
    last = read_status(settings, project) or {"project": project, "mode": "online"}
    write_status(
        settings,
        project,
        {
            **last,
            "state": "retrying" if delay is not None else "failed",
            "error": message,
            "retry_in_s": delay,
            "failures_in_a_row": failures,
        },
    )


def _wait(query: Any, stop: threading.Event, progress: Progress, project: str) -> None:
    """Wait until the query ends or a stop is requested (then stop it after its batch).

    Raises:
        StreamingQueryException: The query failed.
    """
    try:
        while not stop.is_set():
            if query.awaitTermination(1):
                return
        _say(progress, f"online job {project}: stopping after the current batch")
    finally:
        if query.isActive:
            query.stop()
