"""Replay MovieLens ratings into a project's Kafka topic as user events.

Every rating becomes a ``view`` event whose value is the rating; a high rating
also emits a ``smile``, a low one a ``dislike`` (thresholds in ``RatingMapping``).
Event ids are derived from the rating, so replaying twice produces the same ids
and downstream consumers de-duplicate them.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twotier.config import Settings
from twotier.dead_letter import DeadLetters, consume_events
from twotier.events import Event
from twotier.kafka_clients import kafka_error, make_producer
from twotier.naming import events_topic
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)


DEFAULT_PARTITIONS = 2
PROGRESS_EVERY = 20_000


class RatingMapping(BaseModel):
    """How one MovieLens rating maps to events beyond its ``view``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    smile_at_least: float = Field(4.0, ge=0.5, le=5.0)
    """A rating at or above this also emits a ``smile``."""
    dislike_at_most: float = Field(2.0, ge=0.5, le=5.0)
    """A rating at or below this also emits a ``dislike``."""

    @model_validator(mode="after")
    def _ordered(self) -> RatingMapping:
        if self.dislike_at_most >= self.smile_at_least:
            raise ValueError(
                f"dislike_at_most ({self.dislike_at_most}) must be below "
                f"smile_at_least ({self.smile_at_least})"
            )
        return self


@dataclass(frozen=True)
class Rating:
    """One row of MovieLens ``ratings.csv``."""

    user_id: int
    movie_id: int
    rating: float
    timestamp: int
    """Seconds since the Unix epoch."""


def read_ratings(dataset_dir: Path, limit: int | None = None) -> list[Rating]:
    """The ratings of ``dataset_dir/ratings.csv`` in event-time order (ties by user, movie).

    Args:
        dataset_dir: The MovieLens folder.
        limit: Keep only the first ``limit`` ratings in event-time order.

    Raises:
        FileNotFoundError: ``ratings.csv`` is missing.
        ValueError: A row is malformed; the message names the line.
    """
    path = Path(dataset_dir) / "ratings.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point dataset_dir at a MovieLens folder")
    rows: list[Rating] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(
                    Rating(
                        int(row["userId"]),
                        int(row["movieId"]),
                        float(row["rating"]),
                        int(row["timestamp"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: not a MovieLens rating row: {row}") from exc
    rows.sort(key=lambda r: (r.timestamp, r.user_id, r.movie_id))
    return rows if limit is None else rows[:limit]


def rating_events(
    project: str,
    rating: Rating,
    mapping: RatingMapping | None = None,
    ts_ms: int | None = None,
) -> list[Event]:
    """The events of one rating: a ``view``, plus a ``smile`` or ``dislike``, at the
    rating's time (or at ``ts_ms``, which also goes into their ids)."""
    mapping = mapping or RatingMapping()
    ts = rating.timestamp * 1000 if ts_ms is None else ts_ms
    actions: list[tuple[str, float]] = [("view", rating.rating)]
    if rating.rating >= mapping.smile_at_least:
        actions.append(("smile", 1.0))
    elif rating.rating <= mapping.dislike_at_most:
        actions.append(("dislike", 1.0))
    return [
        Event(
            event_id=f"ml-{rating.user_id}-{rating.movie_id}-{ts}-{action}",
            project=project,
            user_id=str(rating.user_id),
            item_id=str(rating.movie_id),
            action=action,
            value=value,
            ts=ts,
            context={"source": "movielens"},
        )
        for action, value in actions
    ]


def movielens_events(
    project: str,
    dataset_dir: Path,
    limit: int | None = None,
    mapping: RatingMapping | None = None,
    *,
    skip: int = 0,
    retime_from_ms: int | None = None,
) -> Iterator[Event]:
    """All events of the first ``limit`` ratings, in event-time order.

    Args:
        project: The project the events belong to.
        dataset_dir: The MovieLens folder.
        limit: Only the first ``limit`` ratings (counted before ``skip``).
        mapping: Rating thresholds for ``smile`` / ``dislike``.
        skip: Leave out the first ``skip`` ratings (those a first replay sent).
        retime_from_ms: Re-time the ratings to this time (ms), one millisecond apart in
            their order: the users' real later choices, made after what was served now.
    """
    for k, rating in enumerate(read_ratings(dataset_dir, limit)[skip:]):
        ts_ms = None if retime_from_ms is None else retime_from_ms + k
        yield from rating_events(project, rating, mapping, ts_ms=ts_ms)


def ensure_topic(settings: Settings, project: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """Create the project's events topic if it is missing; return its name."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    topic = events_topic(project)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka.bootstrap,
            client_id="twotier-replay",
            bootstrap_timeout_ms=10_000,
        )
    except (KafkaError, OSError) as exc:
        raise kafka_error(settings, exc) from exc
    try:
        if topic not in admin.list_topics():
            try:
                admin.create_topics(
                    {topic: {"num_partitions": partitions, "replication_factor": 1}},
                    wait_for_metadata=True,
                )
                log.info("created topic %s with %d partitions", topic, partitions)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        admin.close()
    return topic


def replay_movielens(
    settings: Settings,
    project: str,
    dataset_dir: Path,
    limit: int | None = None,
    speedup: float | None = None,
    progress: Progress = quiet,
    mapping: RatingMapping | None = None,
    *,
    skip: int = 0,
    retime_from_ms: int | None = None,
) -> int:
    """Produce the MovieLens ratings as JSON events to the project's topic.

    Args:
        settings: Where Kafka is.
        project: The project whose topic (``twotier.<project>.events``) receives the events.
        dataset_dir: The MovieLens folder holding ``ratings.csv``.
        limit: Replay only the first ``limit`` ratings in event-time order.
        speedup: ``None`` sends as fast as possible; otherwise event-time gaps are
            followed, divided by ``speedup`` (``86400`` replays a day per second).
        progress: Receives a line every 20,000 events.
        mapping: Rating thresholds for ``smile`` / ``dislike``.
        skip: Leave out the first ``skip`` ratings (a first replay sent them).
        retime_from_ms: Re-time the ratings to start at this time (ms), one millisecond
            apart in their order (see ``movielens_events``).

    Returns:
        The number of events produced (acknowledged by all in-sync replicas).

    Raises:
        TwotierError: Kafka is unreachable or rejected an event.
    """
    from kafka.errors import KafkaError

    if speedup is not None and speedup <= 0:
        raise ValueError(f"speedup must be > 0 or None, got {speedup}")
    topic = ensure_topic(settings, project)
    producer = make_producer(settings, "twotier-replay")

    failures: list[BaseException] = []
    sent = 0
    wall_start = time.monotonic()
    first_ts: int | None = None
    progress(f"replay: producing MovieLens events to {topic}")
    try:
        replayed = movielens_events(
            project, dataset_dir, limit, mapping, skip=skip, retime_from_ms=retime_from_ms
        )
        for event in replayed:
            if speedup is not None:
                first_ts = event.ts if first_ts is None else first_ts
                delay = wall_start + (event.ts - first_ts) / 1000 / speedup - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            future = producer.send(
                topic, key=event.user_id.encode(), value=event.to_json().encode()
            )
            future.add_errback(failures.append)
            sent += 1
            if failures:
                break
            if sent % PROGRESS_EVERY == 0:
                progress(f"replay: {sent} events sent")
        producer.flush()
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        producer.close()
    if failures:
        raise kafka_error(settings, Exception(f"{len(failures)} event(s) failed: {failures[0]}"))
    progress(f"replay: {sent} events produced to {topic} in {time.monotonic() - wall_start:.1f} s")
    return sent


def read_events(
    settings: Settings, project: str, timeout_s: float = 30.0, skip_bad: bool = True
) -> list[Event]:
    """Every event currently in the project's topic, read from the beginning.

    Reads up to the end offsets seen at the start, so it returns as soon as the
    topic is drained (or after ``timeout_s``). Malformed messages are counted and
    logged, not dead-lettered: the topic's own consumer does that once
    (``twotier.dead_letter.consume_events``).

    Args:
        settings: Where Kafka is.
        project: The project whose topic is read.
        timeout_s: Give up waiting for more records after this long.
        skip_bad: Skip (and log) malformed messages instead of raising ``BadEvent``.

    Raises:
        TwotierError: Kafka is unreachable.
        BadEvent: A message is malformed and ``skip_bad`` is false (raised after reading).
    """
    counted = DeadLetters(settings, project, publish=False)
    events = list(consume_events(settings, project, dead_letters=counted, timeout_s=timeout_s))
    if counted.first_error is not None:
        if not skip_bad:
            raise counted.first_error
        log.warning(
            "skipped %d malformed message(s) in %s: %s",
            counted.total,
            events_topic(project),
            counted.counts(),
        )
    return events
