"""The synthetic meme feed: action rates, skew, learnable affinity, determinism, pacing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from twotier.events import Event, parse_event
from twotier.generate import MemeFeed, MemeFeedConfig, TokenBucket

N_EVENTS = 150_000


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(MemeFeed(MemeFeedConfig(users=800, items=4000, seed=7)).events(limit=N_EVENTS))


def test_rates_per_view_are_within_tolerance(events: list[Event]) -> None:
    counts = Counter(e.action for e in events)
    views = counts["view"]
    assert sum(counts.values()) == N_EVENTS
    expected = {"smile": 0.08, "dislike": 0.03, "comment": 0.01, "share": 0.005}
    for action, rate in expected.items():
        assert counts[action] / views == pytest.approx(rate, rel=0.2), action
    assert set(counts) == {"view", *expected}


def test_every_event_is_valid_and_carries_the_content_type(events: list[Event]) -> None:
    feed = MemeFeed(MemeFeedConfig(users=800, items=4000, seed=7))
    types = {item.item_id: item.attributes["content_type"] for item in feed.items()}
    for event in events[:2000]:
        assert parse_event(event.to_json(), {"memes"}) == event
        assert event.context == {"content_type": types[event.item_id]}
    assert set(types.values()) == {"image", "video", "gif"}


def test_every_action_follows_its_view(events: list[Event]) -> None:
    last_view: tuple[str, str, int] | None = None
    for event in events:
        key = (event.user_id, event.item_id, event.ts)
        if event.action == "view":
            last_view = key
        else:
            assert key == last_view
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)


def test_popularity_and_activity_are_skewed(events: list[Event]) -> None:
    views = [e for e in events if e.action == "view"]
    items = Counter(e.item_id for e in views)
    users = Counter(e.user_id for e in views)
    top_items = sum(n for _, n in items.most_common(400)) / len(views)  # top 10 % of 4000
    top_users = sum(n for _, n in users.most_common(80)) / len(views)  # top 10 % of 800
    assert top_items > 0.5
    assert top_users > 0.3
    assert items.most_common(1)[0][1] > 50 * np.median(list(items.values()))


def test_smiles_follow_the_hidden_affinity(events: list[Event]) -> None:
    feed = MemeFeed(MemeFeedConfig(users=800, items=4000, seed=7))
    types = feed.config.content_types
    high: Counter[str] = Counter()
    low: Counter[str] = Counter()
    for event in events:
        user = int(event.user_id[1:])
        affinity = feed.affinity[user, types.index(event.context["content_type"])]
        bucket = high if affinity > 1.5 else low if affinity < 0.5 else None
        if bucket is not None:
            bucket[event.action] += 1
    assert high["smile"] / high["view"] > 3 * low["smile"] / low["view"]


def test_same_seed_same_events_other_seed_other_events() -> None:
    config = MemeFeedConfig(users=50, items=100, seed=11)
    first = list(MemeFeed(config).events(limit=5000))
    assert first == list(MemeFeed(config).events(limit=5000))
    other = list(MemeFeed(config.model_copy(update={"seed": 12})).events(limit=5000))
    assert [(e.user_id, e.item_id) for e in other] != [(e.user_id, e.item_id) for e in first]
    assert MemeFeed(config).items() == MemeFeed(config).items()


def test_a_longer_limit_extends_the_same_stream() -> None:
    feed = MemeFeed(MemeFeedConfig(users=20, items=30, seed=1))
    assert list(feed.events(limit=10_000))[:3000] == list(feed.events(limit=3000))


def test_event_time_spacing_and_project() -> None:
    config = MemeFeedConfig(start_ts_ms=1_000_000, impressions_per_second=10, seed=2)
    views = [e for e in MemeFeed(config).events("other", limit=200) if e.action == "view"]
    assert [v.ts for v in views[:3]] == [1_000_000, 1_000_100, 1_000_200]
    assert {v.project for v in views} == {"other"}


@pytest.mark.parametrize(
    "bad",
    [
        {"users": 0},
        {"content_type_shares": (0.5, 0.5)},
        {"content_type_shares": (0.0, 0.0, 0.0)},
        {"smile_rate": 0.9},
        {"unknown": 1},
    ],
)
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MemeFeedConfig.model_validate(bad)


class FakeClock:
    """A clock that only moves when the bucket sleeps (deterministic pacing test)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_paces_to_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(200.0, burst=10, clock=clock.time, sleep=clock.sleep)
    for _ in range(1000):
        bucket.take()
    assert clock.now == pytest.approx(1000 / 200, rel=0.01)


def test_token_bucket_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(0)
