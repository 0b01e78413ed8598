"""A synthetic meme feed: seeded, deterministic user events for load tests.

``MemeFeed`` holds users, items of content type image/video/gif, Zipf-skewed item
popularity and user activity, and a hidden user-by-content-type affinity. Each
impression is a ``view``; it may also bring a ``smile`` (about 8 % of views, more for
content types the user likes, so a model has something to learn), a ``dislike``
(about 3 %), a ``comment`` (about 1 %) and a ``share`` (about 0.5 %). Every event
carries ``context={"content_type": ...}``.

``generate_memes`` produces the feed to a project's topic at a chosen rate
(token-bucket pacing) and loads the items as item data (``twotier.items``).

The same config (seed included) gives the same events, ids included: re-running
with the same seed re-sends events that consumers de-duplicate; use another seed for
new events.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from twotier.config import Settings
from twotier.events import Event
from twotier.features.builtin import CONTENT_TYPES
from twotier.items import Item, load_items
from twotier.kafka_clients import kafka_error, make_producer
from twotier.progress import Progress, quiet
from twotier.replay import ensure_topic

log = logging.getLogger(__name__)


DEFAULT_PROJECT = "memes"
DEFAULT_START_TS_MS = 1_700_000_000_000
"""Event time of the first impression when none is given (2023-11-14)."""
_CHUNK = 4096
"""Impressions drawn per numpy call; part of the stream's definition (keeps it deterministic)."""


class MemeFeedConfig(BaseModel):
    """The shape of a synthetic meme feed; the same config always yields the same events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(1000, ge=1)
    items: int = Field(5000, ge=1)
    seed: int = Field(0, ge=0)
    content_types: tuple[str, ...] = CONTENT_TYPES
    content_type_shares: tuple[float, ...] = (0.6, 0.25, 0.15)
    """Share of items per content type, in the order of ``content_types``."""
    item_zipf: float = Field(1.1, ge=0)
    """Item popularity ∝ 1 / rank^item_zipf (0: uniform)."""
    user_zipf: float = Field(0.8, ge=0)
    """User activity ∝ 1 / rank^user_zipf (0: uniform)."""
    smile_rate: float = Field(0.08, ge=0, le=0.3)
    """Mean smiles per view; per user and content type it is scaled by the affinity."""
    dislike_rate: float = Field(0.03, ge=0, le=0.5)
    comment_rate: float = Field(0.01, ge=0, le=0.3)
    share_rate: float = Field(0.005, ge=0, le=0.3)
    affinity_concentration: float = Field(1.0, gt=0)
    """Dirichlet concentration of the hidden affinity: smaller means stronger tastes."""
    start_ts_ms: int = Field(DEFAULT_START_TS_MS, gt=0)
    """Event time of the first impression."""
    impressions_per_second: float = Field(100.0, gt=0)
    """Event-time spacing of impressions."""

    @model_validator(mode="after")
    def _shares(self) -> MemeFeedConfig:
        if len(self.content_type_shares) != len(self.content_types):
            raise ValueError(
                f"content_type_shares has {len(self.content_type_shares)} values for "
                f"{len(self.content_types)} content types {list(self.content_types)}"
            )
        if any(s < 0 for s in self.content_type_shares) or sum(self.content_type_shares) <= 0:
            raise ValueError(
                f"content_type_shares must be >= 0 with a positive sum, got "
                f"{list(self.content_type_shares)}"
            )
        return self

    @property
    def events_per_impression(self) -> float:
        """Expected events per impression (the view plus its actions)."""
        return 1 + self.smile_rate + self.dislike_rate + self.comment_rate + self.share_rate


def _zipf_cdf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative probabilities over ids 0..n-1, with Zipf weights on a random rank order."""
    ranks = rng.permutation(n) + 1
    weights = 1.0 / ranks.astype(np.float64) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


class MemeFeed:
    """Users, items and the hidden tastes of one synthetic meme feed.

    Example:
        >>> feed = MemeFeed(MemeFeedConfig(users=10, items=20, seed=1))
        >>> [e.action for e in feed.events("memes", limit=3)]
        ['view', 'view', 'view']
    """

    def __init__(self, config: MemeFeedConfig | None = None) -> None:
        self.config = config or MemeFeedConfig()
        c = self.config
        rng = np.random.default_rng([c.seed, 0])
        shares = np.asarray(c.content_type_shares, dtype=np.float64)
        self.item_types: np.ndarray = rng.choice(
            len(c.content_types), size=c.items, p=shares / shares.sum()
        )
        """Per item index, the index of its content type."""
        self.item_cdf = _zipf_cdf(c.items, c.item_zipf, rng)
        self.user_cdf = _zipf_cdf(c.users, c.user_zipf, rng)
        k = len(c.content_types)
        self.affinity: np.ndarray = rng.dirichlet([c.affinity_concentration] * k, size=c.users) * k
        """Per user and content type, the smile-rate multiplier (mean 1 over types)."""

    @staticmethod
    def user_id(index: int) -> str:
        return f"u{index}"

    @staticmethod
    def item_id(index: int) -> str:
        return f"m{index}"

    def items(self) -> list[Item]:
        """Every item with its ``content_type`` attribute (the item data to load)."""
        types = self.config.content_types
        return [
            Item(item_id=self.item_id(i), attributes={"content_type": types[int(t)]})
            for i, t in enumerate(self.item_types)
        ]

    def events(self, project: str = DEFAULT_PROJECT, limit: int | None = None) -> Iterator[Event]:
        """The feed's events in event-time order: each impression's view, then its actions.

        Args:
            project: Written into every event.
            limit: Stop after this many events (``None``: never stop).
        """
        c = self.config
        rng = np.random.default_rng([c.seed, 1])
        types = c.content_types
        no_smile = max(1e-9, 1 - c.smile_rate)
        dislike_given_no_smile = min(1.0, c.dislike_rate / no_smile)
        spacing_ms = 1000.0 / c.impressions_per_second
        sent = 0
        impression = 0
        while True:
            users = np.searchsorted(self.user_cdf, rng.random(_CHUNK), side="right")
            items = np.searchsorted(self.item_cdf, rng.random(_CHUNK), side="right")
            kinds = self.item_types[items]
            affinity = self.affinity[users, kinds]
            draws = rng.random((_CHUNK, 4))
            smile = draws[:, 0] < np.clip(c.smile_rate * affinity, 0, 1)
            dislike = ~smile & (draws[:, 1] < dislike_given_no_smile)
            comment = draws[:, 2] < np.clip(c.comment_rate * affinity, 0, 1)
            share = draws[:, 3] < np.clip(c.share_rate * affinity, 0, 1)
            for j in range(_CHUNK):
                ts = c.start_ts_ms + math.floor(impression * spacing_ms)
                actions = ["view"]
                if smile[j]:
                    actions.append("smile")
                if dislike[j]:
                    actions.append("dislike")
                if comment[j]:
                    actions.append("comment")
                if share[j]:
                    actions.append("share")
                user, item = self.user_id(int(users[j])), self.item_id(int(items[j]))
                context = {"content_type": types[int(kinds[j])]}
                for action in actions:
                    if limit is not None and sent >= limit:
                        return
                    yield Event(
                        event_id=f"gen-{project}-{c.seed}-{impression}-{action}",
                        project=project,
                        user_id=user,
                        item_id=item,
                        action=action,
                        value=1.0,
                        ts=ts,
                        context=context,
                    )
                    sent += 1
                impression += 1


class TokenBucket:
    """Paces work to ``rate`` units per second, allowing bursts of up to ``burst`` units."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 units per second, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()

    def take(self, n: float = 1.0) -> None:
        """Wait until ``n`` units may go, then spend them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


@dataclass
class GenerateReport:
    """What ``generate_memes`` did."""

    project: str
    topic: str
    events: int
    items: int
    seconds: float
    actions: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        """The achieved rate."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def generate_memes(
    settings: Settings,
    project: str = DEFAULT_PROJECT,
    config: MemeFeedConfig | None = None,
    events_per_second: float = 1000.0,
    limit: int | None = None,
    duration_s: float | None = None,
    start_ts_ms: int | None = None,
    load_item_data: bool = True,
    progress: Progress = quiet,
) -> GenerateReport:
    """Produce the synthetic meme feed to the project's topic at a paced rate.

    Args:
        settings: Where Kafka (and the online store, for item data) are.
        project: The project whose topic (``twotier.<project>.events``) receives events.
        config: The feed (users, items, seed, rates); default ``MemeFeedConfig()``.
        events_per_second: Target rate, paced by a token bucket.
        limit: Stop after this many events.
        duration_s: Stop after this many seconds. With neither bound, runs until
            interrupted (``KeyboardInterrupt`` stops it cleanly).
        start_ts_ms: Event time of the first impression; default now. Impressions are
            spaced in event time to match ``events_per_second``.
        load_item_data: Upsert the items' content types into the online store first.
        progress: Receives a line about every 5 seconds.

    Returns:
        Counts, duration and the achieved rate.

    Raises:
        TwotierError: Kafka (or the online store) is unreachable or refused a write.
        ValueError: A rate, limit or duration is not positive.
    """
    from kafka.errors import KafkaError

    if events_per_second <= 0:
        raise ValueError(f"events_per_second must be > 0, got {events_per_second}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    base = config or MemeFeedConfig()
    start = start_ts_ms if start_ts_ms is not None else int(time.time() * 1000)
    feed = MemeFeed(
        base.model_copy(
            update={
                "start_ts_ms": start,
                "impressions_per_second": events_per_second / base.events_per_impression,
            }
        )
    )
    items = 0
    if load_item_data:
        progress(f"generate: loading {base.items} items as item data of project {project}")
        items = load_items(settings, project, feed.items())
    topic = ensure_topic(settings, project)
    producer = make_producer(settings, "twotier-generate")
    failures: list[BaseException] = []
    actions: Counter[str] = Counter()
    bucket = TokenBucket(events_per_second)
    sent = 0
    began = time.monotonic()
    deadline = began + duration_s if duration_s is not None else math.inf
    next_report = began + 5.0
    progress(f"generate: producing to {topic} at {events_per_second:g} events/s")
    try:
        for event in feed.events(project, limit):
            now = time.monotonic()
            if now >= deadline:
                break
            bucket.take()
            future = producer.send(
                topic, key=event.user_id.encode(), value=event.to_json().encode()
            )
            future.add_errback(failures.append)
            sent += 1
            actions[event.action] += 1
            if failures:
                break
            if now >= next_report:
                next_report = now + 5.0
                progress(f"generate: {sent} events, {sent / (now - began):.0f} events/s")
        producer.flush()
    except KeyboardInterrupt:
        progress("generate: interrupted, flushing")
        producer.flush()
    except KafkaError as exc:
        raise kafka_error(settings, exc) from exc
    finally:
        producer.close()
    seconds = time.monotonic() - began
    if failures:
        raise kafka_error(settings, Exception(f"{len(failures)} event(s) failed: {failures[0]}"))
    report = GenerateReport(project, topic, sent, items, seconds, dict(actions))
    progress(
        f"generate: {sent} events produced to {topic} in {seconds:.1f} s "
        f"({report.events_per_second:.0f} events/s)"
    )
    return report
