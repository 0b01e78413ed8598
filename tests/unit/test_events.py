"""The event schema, its parse errors, and the MovieLens rating → event mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from twotier.events import BadEvent, Event, parse_event
from twotier.replay import Rating, RatingMapping, rating_events, read_ratings

GOOD = {
    "event_id": "e1",
    "project": "movielens",
    "user_id": "u1",
    "item_id": "i1",
    "action": "view",
    "value": 4.5,
    "ts": 1_700_000_000_000,
    "context": {"device": "web"},
}


def raw(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_event_round_trips_through_json() -> None:
    event = parse_event(raw(), {"movielens"})
    assert event.value == 4.5 and event.context == {"device": "web"}
    assert Event.from_json(event.to_json()) == event
    assert json.loads(event.to_json()) == GOOD


def test_defaults_for_value_and_context() -> None:
    event = parse_event(raw(value=..., context=...), {"movielens"})
    assert event.value == 1.0
    assert event.context == {}


def test_an_integer_value_is_accepted_as_float() -> None:
    assert parse_event(raw(value=3), {"movielens"}).value == 3.0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object (got list)"),
        (b"\xff\xfe", "not UTF-8"),
        (raw(user_id=...), "missing field 'user_id'"),
        (raw(ts=...), "missing field 'ts'"),
        (raw(user_id=42), "field 'user_id': Input should be a valid string"),
        (raw(ts="1700000000000"), "field 'ts': Input should be a valid integer"),
        (raw(ts=1.5), "field 'ts'"),
        (raw(ts=0), "field 'ts': Input should be greater than 0"),
        (raw(action=""), "field 'action': String should have at least 1 character"),
        (raw(action="   "), "field 'action'"),
        (raw(value="high"), "field 'value'"),
        (raw(context={"n": 1}), "field 'context.n'"),
        (raw(project="other"), "unknown project 'other' (known: movielens)"),
    ],
)
def test_bad_messages_raise_bad_event_with_the_reason(message: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(message, {"movielens"})
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(b"{}", {"movielens"})
    for field in ("event_id", "project", "user_id", "item_id", "action", "ts"):
        assert f"missing field '{field}'" in info.value.reason


def test_events_are_immutable() -> None:
    event = parse_event(raw(), {"movielens"})
    with pytest.raises(ValidationError):
        event.value = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("stars", "actions"),
    [
        (5.0, ["view", "smile"]),
        (4.0, ["view", "smile"]),
        (3.5, ["view"]),
        (2.5, ["view"]),
        (2.0, ["view", "dislike"]),
        (0.5, ["view", "dislike"]),
    ],
)
def test_rating_maps_to_view_plus_smile_or_dislike(stars: float, actions: list[str]) -> None:
    events = rating_events("movielens", Rating(7, 31, stars, 964982703))
    assert [e.action for e in events] == actions
    view = events[0]
    assert (view.user_id, view.item_id, view.value, view.ts) == ("7", "31", stars, 964982703000)
    assert all(e.value == 1.0 for e in events[1:])
    assert [e.event_id for e in events] == [f"ml-7-31-964982703000-{a}" for a in actions]


def test_event_ids_are_deterministic() -> None:
    rating = Rating(1, 2, 4.5, 1000)
    first = [e.event_id for e in rating_events("movielens", rating)]
    assert first == [e.event_id for e in rating_events("movielens", rating)]


def test_custom_thresholds() -> None:
    mapping = RatingMapping(smile_at_least=5.0, dislike_at_most=1.0)
    assert [e.action for e in rating_events("p", Rating(1, 2, 4.5, 1), mapping)] == ["view"]
    assert [e.action for e in rating_events("p", Rating(1, 2, 1.0, 1), mapping)] == [
        "view",
        "dislike",
    ]


def test_overlapping_thresholds_are_rejected() -> None:
    with pytest.raises(ValidationError, match="must be below"):
        RatingMapping(smile_at_least=3.0, dislike_at_most=3.0)


def test_ratings_are_read_in_event_time_order(movielens: Path) -> None:
    ratings = read_ratings(movielens)
    assert len(ratings) == 100_836
    stamps = [r.timestamp for r in ratings]
    assert stamps == sorted(stamps)
    assert read_ratings(movielens, limit=10) == ratings[:10]


def test_malformed_ratings_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,4.0,100\n1,x,4.0,100\n"
    )
    with pytest.raises(ValueError, match=r"ratings\.csv:3"):
        read_ratings(tmp_path)


def test_missing_ratings_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ratings\.csv"):
        read_ratings(tmp_path)


def test_the_rest_of_the_ratings_replays_retimed_in_order() -> None:
    from twotier.replay import movielens_events

    dataset = Path(__file__).resolve().parents[2].parent / "shared/datasets/movielens-small"
    first = list(movielens_events("p", dataset, limit=100))
    rest = list(movielens_events("p", dataset, limit=150, skip=100, retime_from_ms=5_000))
    ratings = read_ratings(dataset, 150)
    assert {e.user_id for e in rest} == {str(r.user_id) for r in ratings[100:]}
    # One millisecond per rating, in the ratings' order; ids carry the new time.
    assert [e.ts for e in rest if e.action == "view"] == list(range(5_000, 5_050))
    assert all(f"-{e.ts}-" in e.event_id for e in rest)
    assert not {e.event_id for e in first} & {e.event_id for e in rest}
    assert [e.ts for e in movielens_events("p", dataset, limit=3)] == [
        e.ts for e in first[: len(list(movielens_events("p", dataset, limit=3)))]
    ]
