"""Served recommendations as events on the project's Kafka topic, off the request path.

Each item of a ``/recommend`` answer becomes one ``recommendation`` event (value = its
tier-two score) whose context names the request, the rank, the experiment group and both
model versions, so per-group metrics join impressions with the views and smiles that
follow. Requests only put events on a bounded queue; one thread sends them. If Kafka is
down or the queue is full, events are dropped and counted: serving never waits for the log.

For a request sampled by ``serving.feature_log_fraction`` the ingress also hands over the
tier-two input rows of the served items (``LoggedFeatures``); the thread, not the
request, turns each row into the context keys ``features`` (JSON) and ``features_ts``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twotier.config import Settings
from twotier.events import Event
from twotier.feature_log import FEATURES_KEY, FEATURES_TS_KEY, encode_features
from twotier.naming import events_topic

logger = logging.getLogger("ray.serve")

RECOMMENDATION_ACTION = "recommendation"
RETRY_S = 10.0
"""After Kafka could not be reached, events are dropped for this long before trying again."""


@dataclass(frozen=True)
class LoggedFeatures:
    """The tier-two input rows of one sampled request's served items.

    Attributes:
        columns: The model's input columns (``spec.columns()``).
        rows: One row per logged event, in the events' order (float32 as served).
        read_ts: When the features were read (ms), the time recency was computed at.
    """

    columns: Sequence[str]
    rows: np.ndarray
    read_ts: int

    def context(self, index: int) -> dict[str, str]:
        """The context keys of the ``index``-th event: ``features`` and ``features_ts``."""
        return {
            FEATURES_KEY: encode_features(self.columns, self.rows[index].tolist()),
            FEATURES_TS_KEY: str(self.read_ts),
        }


class RecommendationLog:
    """A background Kafka producer of served recommendations.

    Args:
        settings: Where Kafka is.
        max_queued: Events waiting at most; more are dropped.
    """

    def __init__(self, settings: Settings, max_queued: int = 10_000) -> None:
        self._settings = settings
        self._queue: queue.Queue[tuple[Event, LoggedFeatures | None, int] | None] = queue.Queue(
            max_queued
        )
        self.sent = 0
        self.dropped = 0
        self._producer: Any = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="twotier-rec-log", daemon=True)
        self._thread.start()

    def log(self, events: Iterable[Event], features: LoggedFeatures | None = None) -> None:
        """Queue ``events`` for sending; never blocks.

        Args:
            events: The events.
            features: The served input row of each event (``features.rows[i]`` is the
                ``i``-th event's); added to the contexts by the sending thread.
        """
        for index, event in enumerate(events):
            try:
                self._queue.put_nowait((event, features, index))
            except queue.Full:
                self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to ``timeout_s``) and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            queued = self._queue.get()
            if queued is None:
                break
            event, features, index = queued
            producer = self._connect()
            if producer is None:
                self.dropped += 1
                continue
            try:
                if features is not None:
                    event = event.model_copy(
                        update={"context": {**event.context, **features.context(index)}}
                    )
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
