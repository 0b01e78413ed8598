"""Served recommendations as events on the project's Kafka topic, off the request path.

Each item of a ``/recommend`` answer becomes one ``recommendation`` event (value = its
tier-two score) whose context names the request, the rank, the experiment group and both
model versions, so per-group metrics join impressions with the views and smiles that
follow. Requests only put events on a bounded queue; one thread sends them. If Kafka is
down or the queue is full, events are dropped and counted: serving never waits for the log.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

from twotier.config import Settings
from twotier.events import Event
from twotier.naming import events_topic

logger = logging.getLogger("ray.serve")

RECOMMENDATION_ACTION = "recommendation"
RETRY_S = 10.0
"""After Kafka could not be reached, events are dropped for this long before trying again."""


class RecommendationLog:
    """A background Kafka producer of served recommendations.

    Args:
        settings: Where Kafka is.
        max_queued: Events waiting at most; more are dropped.
    """

    def __init__(self, settings: Settings, max_queued: int = 10_000) -> None:
        self._settings = settings
        self._queue: queue.Queue[Event | None] = queue.Queue(max_queued)
        self.sent = 0
        self.dropped = 0
        self._producer: Any = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="twotier-rec-log", daemon=True)
        self._thread.start()

    def log(self, events: Iterable[Event]) -> None:
        """Queue ``events`` for sending; never blocks."""
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to ``timeout_s``) and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                break
            producer = self._connect()
            if producer is None:
                self.dropped += 1
                continue
            try:
                producer.send(
                    events_topic(event.project),
                    key=event.user_id.encode(),
                    value=event.to_json().encode(),
                )
                self.sent += 1
            except Exception as exc:
                self.dropped += 1
                logger.warning("recommendation log: dropped an event (%s)", exc)
        if self._producer is not None:
            self._producer.flush(5)
            self._producer.close(5)

    def _connect(self) -> Any:
        if self._producer is None:
            from twotier.kafka_clients import make_producer

            if time.monotonic() < self._retry_at:
                return None

            try:
                self._producer = make_producer(
                    self._settings,
                    "twotier-serving",
                    acks=1,
                    linger_ms=50,
                    max_block_ms=2_000,
                    bootstrap_timeout_ms=2_000,
                )
            except Exception as exc:
                logger.warning("recommendation log: Kafka unavailable (%s); dropping events", exc)
                self._retry_at = time.monotonic() + RETRY_S
                return None
        return self._producer
