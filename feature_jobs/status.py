"""The online job's status: one small JSON file per project, rewritten after every batch.

``<data_dir>/jobs/<project>/online.json`` holds what the last micro-batch did and how far
behind Kafka the job is, so ``twotier jobs`` (and ``twotier status``) can show it without
talking to Spark::

    {"project": "movielens", "mode": "online", "state": "running",
     "query_id": "5b0e…", "batch_id": 12, "input_rows": 5000, "events": 4998,
     "dead_letters": 2, "dead_letter_reasons": {"bad_json": 2},
     "documents": 812, "written": 812, "skipped": 0,
     "groups": {"user_stats_v1": {"documents": 402, "written": 402, "skipped": 0}},
     "items_looked_up": 0, "duration_s": 1.42, "read_s": 0.61, "aggregate_s": 0.09,
     "write_s": 0.72, "lag": 1200, "lag_by_partition": {"0": 600, "1": 600},
     "end_offsets": {"0": 9100, "1": 9050}, "processed_offsets": {"0": 8500, "1": 8450},
     "error": null, "updated_at": "2025-01-01T12:00:00+00:00", "updated_at_ms": 1735732800000}

``state`` is ``running`` after a batch, ``retrying`` (with ``error`` and ``retry_in_s``)
while the job waits out a fault, and ``stopped`` after a clean stop. Lag is the Kafka
end offsets minus the offsets the last batch processed (Spark's offset log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twotier.config import Settings

log = logging.getLogger(__name__)

STATUS_FILE = "online.json"


def status_path(settings: Settings, project: str) -> Path:
    """Where the online job of ``project`` writes its status."""
    return settings.data_dir / "jobs" / project / STATUS_FILE


def write_status(settings: Settings, project: str, status: Mapping[str, Any]) -> Path:
    """Replace the status file atomically, stamping ``updated_at``; returns its path."""
    path = status_path(settings, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    body = {
        **status,
        "updated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "updated_at_ms": int(now * 1000),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_status(settings: Settings, project: str) -> dict[str, Any] | None:
    """The last status of the online job of ``project``, or ``None`` if it never ran."""
    path = status_path(settings, project)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable job status %s: %s", path, exc)
        return None
    return data


def all_statuses(settings: Settings) -> dict[str, dict[str, Any]]:
    """The status of every project's online job found under ``<data_dir>/jobs``."""
    root = settings.data_dir / "jobs"
    found: dict[str, dict[str, Any]] = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            status = read_status(settings, folder.name)
            if status is not None:
                found[folder.name] = status
    return found


def processed_offsets(checkpoint: Path, batch_id: int) -> dict[int, int]:
    """Per partition, the Kafka offset a batch reads up to (Spark's ``offsets/<id>`` log).

    Returns an empty dict when the log entry is missing or not a Kafka offset map.
    """
    path = checkpoint / "offsets" / str(batch_id)
    try:
        last = path.read_text().strip().splitlines()[-1]
        sources = json.loads(last)
    except (OSError, ValueError, IndexError):
        return {}
    offsets: dict[int, int] = {}
    if isinstance(sources, dict):
        for partitions in sources.values():
            if isinstance(partitions, dict):
                for partition, offset in partitions.items():
                    with contextlib.suppress(TypeError, ValueError):
                        offsets[int(partition)] = int(offset)
    return offsets


def lag_of(end: Mapping[int, int], processed: Mapping[int, int]) -> dict[int, int]:
    """Per partition, records in Kafka not yet processed (a partition never read: all)."""
    return {p: max(0, end[p] - processed.get(p, 0)) for p in sorted(end)}


class KafkaOffsets:
    """End offsets of a topic through a short-lived kafka-python consumer (no group, no commits)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Any = None

    def _connect(self) -> Any:
        if self._consumer is None:
            from twotier.kafka_clients import make_consumer

            self._consumer = make_consumer(
                self.settings,
                "twotier-online-lag",
                allow_auto_create_topics=False,
                bootstrap_timeout_ms=5_000,
                request_timeout_ms=5_000,
            )
        return self._consumer

    def partitions(self, topic: str) -> set[int] | None:
        """The topic's partitions; ``None`` when the topic does not exist.

        Raises:
            Exception: kafka-python's error when the brokers are unreachable.
        """
        consumer = self._connect()
        topics = consumer.topics()
        if topic not in topics:
            return None
        return set(consumer.partitions_for_topic(topic) or ())

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next produced record will get.

        Raises:
            Exception: kafka-python's error when the brokers are unreachable.
        """
        from kafka import TopicPartition

        try:
            partitions = self.partitions(topic) or set()
            consumer = self._connect()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
        finally:
            # No idle connection between batches: it would retry (and log) on its own
            # while the brokers are away.
            self.close()
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    def close(self) -> None:
        """Disconnect; the next call reconnects."""
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None


def status_line(status: Mapping[str, Any]) -> str:
    """The one log line of a batch status (the same facts as the JSON)."""
    lag = status.get("lag")
    return (
        f"online batch {status.get('batch_id')} of {status.get('project')}: "
        f"{status.get('input_rows', 0)} rows, {status.get('dead_letters', 0)} dead letters, "
        f"{status.get('written', 0)} documents written, {status.get('skipped', 0)} already "
        f"applied, {status.get('duration_s', 0):.2f} s (read {status.get('read_s', 0):.2f}, "
        f"aggregate {status.get('aggregate_s', 0):.2f}, write {status.get('write_s', 0):.2f}), "
        f"lag {'?' if lag is None else lag}"
    )


def job_summary(status: Mapping[str, Any], now_ms: int | None = None) -> str:
    """A short line for ``twotier status``: state, last batch, lag and how long ago.

    Example:
        >>> job_summary({"project": "memes", "state": "running", "batch_id": 12,
        ...              "lag": 40, "updated_at_ms": 1_000}, now_ms=4_000)
        'online job memes: running, batch 12, lag 40, updated 3 s ago'
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    age = max(0, now - int(status.get("updated_at_ms", now))) // 1000
    lag = status.get("lag")
    line = (
        f"online job {status.get('project')}: {status.get('state', '?')}, "
        f"batch {status.get('batch_id', '-')}, lag {'?' if lag is None else lag}, "
        f"updated {age} s ago"
    )
    if status.get("error"):
        line += f"; error: {status['error']}"
    return line


LAG_TIMEOUT_S = 1.5
"""How long ``lags_now`` waits for Kafka before it reports the lag as unknown."""


def lags_now(
    settings: Settings, statuses: Mapping[str, Mapping[str, Any]], timeout_s: float = LAG_TIMEOUT_S
) -> dict[str, int] | None:
    """Per project, records in its topic now that its job has not processed: Kafka's end
    offsets now minus the offsets of the job's last batch.

    One Kafka connection serves every job. ``lag`` in a status is as of its last batch; a
    job that stopped or hangs shows its real distance only here.

    Args:
        settings: Where Kafka is.
        statuses: Job statuses by project, as ``all_statuses`` returns them.
        timeout_s: How long to wait for Kafka to answer at all.

    Returns:
        The lag by project (0 for a project whose topic does not exist yet), or ``None``
        when Kafka does not answer within ``timeout_s``.
    """
    from kafka import TopicPartition

    from twotier.kafka_clients import make_consumer
    from twotier.naming import events_topic

    if not statuses:
        return {}
    wait_ms = max(1, int(timeout_s * 1000))
    topics = {project: events_topic(project) for project in statuses}
    try:
        consumer = make_consumer(
            settings,
            "twotier-status-lag",
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=wait_ms,
            request_timeout_ms=wait_ms,
        )
    except Exception:  # kafka-python's errors (wrapped) when the broker is away
        return None
    try:
        existing = consumer.topics()
        wanted = [
            TopicPartition(topic, partition)
            for topic in sorted(set(topics.values()) & existing)
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(wanted) if wanted else {}
    except Exception:  # the broker went away mid-way
        return None
    finally:
        with contextlib.suppress(Exception):
            consumer.close()
    lags: dict[str, int] = {}
    for project, topic in topics.items():
        end = {tp.partition: int(o) for tp, o in ends.items() if tp.topic == topic}
        done = statuses[project].get("processed_offsets") or {}
        processed = {int(p): int(o) for p, o in done.items()}
        lags[project] = sum(lag_of(end, processed).values())
    return lags
