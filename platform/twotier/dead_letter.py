"""Malformed events never stop a consumer: they go to the project's dead-letter topic.

``DeadLetters`` is the consumer-side piece: given a raw Kafka record that fails
``twotier.events.parse_event``, it produces a JSON record to
``naming.dead_letter_topic(project)`` and counts it per reason::

    {"reason": "missing_field", "detail": "missing field 'user_id'",
     "raw": "{\\"event_id\\": ...}", "raw_encoding": "utf-8",
     "topic": "twotier.memes.events", "partition": 0, "offset": 41,
     "ts": 1700000000000, "dead_lettered_at": 1700000000123}

``raw`` is the original message text, or its base64 (``raw_encoding: "base64"``) when
the bytes are not UTF-8. ``ts`` is the Kafka timestamp of the original record.

``consume_events`` reads a project's topic with kafka-python and yields the valid
events, dead-lettering the rest and going on.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from twotier.closing import Closing
from twotier.config import Settings
from twotier.events import BadEvent, Event, parse_event
from twotier.kafka_clients import kafka_error, make_consumer, make_producer, topic_partitions
from twotier.naming import dead_letter_topic, events_topic

log = logging.getLogger(__name__)


def dead_letter_record(
    error: BadEvent,
    raw: bytes | str | None,
    topic: str,
    partition: int,
    offset: int,
    ts: int | None,
) -> dict[str, Any]:
    """The JSON document that describes one malformed record in the dead-letter topic.

    Args:
        error: Why the record is malformed.
        raw: The original message value (``None`` for a tombstone).
        topic: The topic it was read from.
        partition: Its partition.
        offset: Its offset in that partition.
        ts: Its Kafka timestamp (ms), if any.
    """
    if raw is None:
        text, encoding = None, "none"
    elif isinstance(raw, str):
        text, encoding = raw, "utf-8"
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "reason": error.kind,
        "detail": error.reason,
        "raw": text,
        "raw_encoding": encoding,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "ts": ts,
        "dead_lettered_at": int(time.time() * 1000),
    }


class DeadLetters(Closing):
    """Validates raw records of one project; sends the malformed ones to its dead-letter topic.

    Use as a context manager (or call ``close()``) so pending dead letters are flushed.

    Example:
        >>> with DeadLetters(settings, "memes") as dead:  # doctest: +SKIP
        ...     event = dead.parse(record)  # None when dead-lettered
        ...     dead.counts()
        {'bad_json': 1}
    """

    def __init__(
        self,
        settings: Settings,
        project: str,
        known_projects: Collection[str] | None = None,
        publish: bool = True,
    ) -> None:
        """Prepare the dead letters of ``project``; the producer connects on first use.

        Args:
            settings: Where Kafka is.
            project: The project whose topic is consumed.
            known_projects: Projects whose events are valid on this topic (default: only
                ``project``; an event of another project is ``unknown_project``).
            publish: ``False`` only counts and logs (for readers that re-read a topic
                and must not publish the same dead letter twice).
        """
        self.settings = settings
        self.project = project
        self.topic = dead_letter_topic(project)
        self.known_projects = frozenset(known_projects or (project,))
        self.publish = publish
        self.first_error: BadEvent | None = None
        self._counts: Counter[str] = Counter()
        self._producer: Any = None
        self._failures: list[BaseException] = []

    def counts(self) -> dict[str, int]:
        """How many records were dead-lettered, per reason (``BadEvent.kind``)."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        """How many records were dead-lettered in all."""
        return sum(self._counts.values())

    def parse(self, record: Any) -> Event | None:
        """The event of a kafka-python ``ConsumerRecord``, or ``None`` once dead-lettered.

        Args:
            record: Has ``value``, ``topic``, ``partition``, ``offset`` and ``timestamp``.
        """
        try:
            if record.value is None:
                raise BadEvent("empty message (tombstone)", "bad_json")
            return parse_event(record.value, self.known_projects)
        except BadEvent as error:
            self.dead_letter(
                error,
                record.value,
                record.topic,
                record.partition,
                record.offset,
                getattr(record, "timestamp", None),
            )
            return None

    def dead_letter(
        self,
        error: BadEvent,
        raw: bytes | str | None,
        topic: str,
        partition: int,
        offset: int,
        ts: int | None = None,
    ) -> None:
        """Count one malformed record and (when publishing) send it to the dead-letter topic.

        Raises:
            TwotierError: Kafka is unreachable or refused an earlier dead letter.
        """
        self._counts[error.kind] += 1
        if self.first_error is None:
            self.first_error = error
        log.warning(
            "dead letter from %s[%d]@%d: %s (%s)",
            topic,
            partition,
            offset,
            error.kind,
            error.reason,
        )
        if not self.publish:
            return
        doc = dead_letter_record(error, raw, topic, partition, offset, ts)
        key = f"{topic}:{partition}:{offset}".encode()
        producer = self._connect()
        future = producer.send(self.topic, key=key, value=json.dumps(doc).encode())
        future.add_errback(self._failures.append)
        self._raise_failures()

    def flush(self) -> None:
        """Wait until every dead letter is acknowledged.

        Raises:
            TwotierError: Kafka refused a dead letter.
        """
        if self._producer is not None:
            from kafka.errors import KafkaError

            try:
                self._producer.flush()
            except KafkaError as exc:
                raise kafka_error(self.settings, exc) from exc
        self._raise_failures()

    def close(self) -> None:
        """Flush and disconnect; counts stay readable."""
        try:
            self.flush()
        finally:
            if self._producer is not None:
                self._producer.close()
                self._producer = None

    def _connect(self) -> Any:
        if self._producer is None:
            self._producer = make_producer(self.settings, f"twotier-dead-letter-{self.project}")
        return self._producer

    def _raise_failures(self) -> None:
        if self._failures:
            raise kafka_error(
                self.settings,
                Exception(f"{len(self._failures)} dead letter(s) to {self.topic} failed"),
            ) from self._failures[0]


def consume_events(
    settings: Settings,
    project: str,
    offsets: Mapping[int, int] | None = None,
    dead_letters: DeadLetters | None = None,
    stop_at_end: bool = True,
    timeout_s: float = 30.0,
) -> Iterator[Event]:
    """The valid events of a project's topic, in partition order; malformed ones dead-lettered.

    Never stops on a malformed record: it goes to ``dead_letters`` and reading goes on.

    Args:
        settings: Where Kafka is.
        project: The project whose topic (``naming.events_topic``) is read.
        offsets: Per partition, the offset to start at; partitions left out (or all,
            when ``None``) start at the beginning.
        dead_letters: Receives the malformed records; by default a publishing
            ``DeadLetters(settings, project)`` that is flushed and closed at the end.
        stop_at_end: Stop at the end offsets seen at the start (the topic is drained);
            ``False`` keeps following the topic until ``timeout_s`` passes without a record.
        timeout_s: With ``stop_at_end``, give up after this long in all; otherwise, the
            idle time after which to stop.

    Yields:
        The events, each partition's in offset order.

    Raises:
        TwotierError: Kafka is unreachable.
    """
    from kafka.errors import KafkaError

    topic = events_topic(project)
    own = dead_letters is None
    dead = dead_letters if dead_letters is not None else DeadLetters(settings, project)
    consumer = make_consumer(settings, f"twotier-consume-{project}", allow_auto_create_topics=False)
    try:
        tps = topic_partitions(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        starts = dict(offsets or {})
        for tp in tps:
            if tp.partition in starts:
                consumer.seek(tp, starts[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        end: dict[Any, int] = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop_at_end and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            batch = consumer.poll(timeout_ms=500)
            if batch and not stop_at_end:
                deadline = time.monotonic() + timeout_s
            for tp in sorted(batch, key=lambda t: t.partition):
                for record in batch[tp]:
                    event = dead.parse(record)
                    if event is not None:
                        yield event
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        consumer.close()
        if own:
            dead.close()
        else:
            dead.flush()
