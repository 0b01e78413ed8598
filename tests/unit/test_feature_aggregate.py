"""Aggregation of events into online-store updates: counters, sums, by-values, maxima, ids."""

from __future__ import annotations

from typing import Any

import pytest

from twotier.events import Event
from twotier.features.aggregate import GroupUpdates, aggregate, entity_id
from twotier.features.builtin import builtin_projects
from twotier.features.spec import CounterFeature, FeatureGroup

MEMES = builtin_projects()["memes"]
MOVIELENS = builtin_projects()["movielens"]


def _event(n: int, user: str, item: str, action: str, value: float = 1.0, **ctx: str) -> Event:
    return Event(
        event_id=f"e{n}",
        project="memes",
        user_id=user,
        item_id=item,
        action=action,
        value=value,
        ts=1_000 * n,
        context=ctx,
    )


def test_entity_ids() -> None:
    assert entity_id("user", "u1", "i9") == "u1"
    assert entity_id("item", "u1", "i9") == "i9"
    assert entity_id("user_item", "u1", "i9") == "u1|i9"
    session: Any = "session"
    with pytest.raises(ValueError, match="unknown entity 'session'"):
        entity_id(session, "u1", "i9")


def test_counters_sums_and_last_seen_per_item() -> None:
    group = MOVIELENS.group("item_stats")
    events = [
        _event(1, "u1", "i1", "view", 4.0),
        _event(5, "u2", "i1", "view", 2.5),
        _event(3, "u2", "i1", "smile"),
        _event(4, "u1", "i2", "dislike"),
        _event(2, "u1", "i1", "view", 5.0),  # out of order: the max still wins
    ]
    updates = aggregate(group, events)
    decayed = {
        f"views_decayed_{d}": updates.increments["i1"].pop(f"views_decayed_{d}")
        for d in ("30d", "365d")
    }
    assert updates.increments == {
        "i1": {"views": 3, "rating_sum": 11.5, "smiles": 1},
        "i2": {"dislikes": 1},
    }
    # Decayed views: each adds 2 ** ((ts - reference) / half-life), reference 2000-01-01.
    f = group.features[[g.name for g in group.features].index("views_decayed_30d")]
    assert isinstance(f, CounterFeature)
    assert decayed["views_decayed_30d"] == pytest.approx(
        sum(f.decay_weight(t) for t in (1000, 5000, 2000))
    )
    assert updates.maxima == {"i1": {"last_view_ts": 5000.0}}
    assert isinstance(updates.increments["i1"]["views"], int)
    assert updates.entity_ids() == ["i1", "i2"]


def test_user_group_keys_by_user() -> None:
    updates = aggregate(
        MOVIELENS.group("user_stats"),
        [_event(1, "u1", "i1", "view", 3.0), _event(2, "u1", "i2", "view", 1.0)],
    )
    assert updates.increments == {"u1": {"views": 2, "rating_sum": 4.0}}
    assert updates.maxima == {"u1": {"last_view_ts": 2000.0}}


def test_by_values_choose_the_field_and_ignore_undeclared_values() -> None:
    group = MEMES.group("user_stats")
    events = [
        _event(1, "u1", "i1", "smile", content_type="video"),
        _event(2, "u1", "i2", "smile", content_type="video"),
        _event(3, "u1", "i3", "smile", content_type="gif"),
        _event(4, "u1", "i4", "smile", content_type="podcast"),  # not declared
        _event(5, "u1", "i5", "smile"),  # no content type
    ]
    got = aggregate(group, events).increments["u1"]
    # Every smile counts in `smiles`; only declared content types get a by-field.
    assert got == {"smiles": 5, "smiles_by_type__video": 2, "smiles_by_type__gif": 1}


def test_user_item_pairs() -> None:
    group = MEMES.group("user_item")
    events = [
        _event(1, "u1", "i1", "view"),
        _event(2, "u1", "i1", "view"),
        _event(3, "u2", "i1", "view"),
        _event(4, "u1", "i1", "share"),  # not counted by this group
    ]
    updates = aggregate(group, events)
    assert updates.increments == {"u1|i1": {"views": 2}, "u2|i1": {"views": 1}}
    assert updates.maxima == {"u1|i1": {"last_view_ts": 2000.0}, "u2|i1": {"last_view_ts": 3000.0}}


def test_actions_the_group_ignores_leave_no_document() -> None:
    group = FeatureGroup.model_validate(
        {
            "name": "g",
            "entity": "item",
            "features": [{"name": "shares", "kind": "counter", "action": "share"}],
        }
    )
    updates = aggregate(group, [_event(1, "u1", "i1", "view")])
    assert not updates
    assert updates.increments == {} and updates.maxima == {}


def test_mappings_work_like_events() -> None:
    """The Spark job hands over ``row.asDict()``: same answer as Event objects."""
    group = MEMES.group("user_stats")
    events = [_event(1, "u1", "i1", "smile", content_type="gif"), _event(2, "u1", "i1", "view")]
    rows: list[dict[str, Any]] = [e.model_dump() for e in events]
    assert aggregate(group, rows) == aggregate(group, events)


def test_merge_equals_aggregating_all_events_at_once() -> None:
    stats = MOVIELENS.group("item_stats")
    plain = tuple(f for f in stats.features if not getattr(f, "half_life_days", None))
    group = stats.model_copy(update={"features": plain})
    first = [_event(1, "u1", "i1", "view", 4.0), _event(9, "u1", "i1", "view", 1.0)]
    second = [_event(3, "u2", "i1", "view", 2.0), _event(4, "u2", "i2", "smile")]
    merged = GroupUpdates().merge(aggregate(group, first)).merge(aggregate(group, second))
    assert merged.increments == {
        "i1": {"views": 3, "rating_sum": 7.0},
        "i2": {"smiles": 1},
    }
    assert merged.maxima == {"i1": {"last_view_ts": 9000.0}}
    assert merged == aggregate(group, first + second)
