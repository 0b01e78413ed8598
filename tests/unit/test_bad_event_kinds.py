"""Malformed events: the category of each problem and the dead-letter document."""

from __future__ import annotations

import base64
import json

import pytest

from twotier.dead_letter import dead_letter_record
from twotier.events import BadEvent, parse_event

GOOD = {
    "event_id": "e1",
    "project": "memes",
    "user_id": "u1",
    "item_id": "m1",
    "action": "view",
    "ts": 1_700_000_000_000,
}


def raw(**changes: object) -> str:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"\xff\xfe", "not_utf8"),
        ("{not json", "bad_json"),
        ("[1, 2]", "not_object"),
        (raw(user_id=...), "missing_field"),
        (raw(user_id=42), "wrong_type"),
        (raw(ts="1700000000000"), "wrong_type"),
        (raw(context={"n": 1}), "wrong_type"),
        (raw(ts=-5), "invalid_value"),
        (raw(action=""), "invalid_value"),
        (raw(project="movielens"), "unknown_project"),
    ],
)
def test_each_problem_has_its_kind(message: str | bytes, kind: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(message, {"memes"})
    assert info.value.kind == kind


def test_dead_letter_document_keeps_text_or_base64() -> None:
    with pytest.raises(BadEvent) as text_error:
        parse_event(b"{oops", {"memes"})
    doc = dead_letter_record(text_error.value, b"{oops", "twotier.memes.events", 1, 7, 123)
    assert doc["reason"] == "bad_json" and doc["raw"] == "{oops"
    assert (doc["topic"], doc["partition"], doc["offset"], doc["ts"]) == (
        "twotier.memes.events",
        1,
        7,
        123,
    )
    assert "not valid JSON" in doc["detail"]
    json.dumps(doc)

    raw = b"\xff\xfe\x00"
    with pytest.raises(BadEvent) as binary_error:
        parse_event(raw, {"memes"})
    doc = dead_letter_record(binary_error.value, raw, "t", 0, 0, None)
    assert doc["reason"] == "not_utf8" and doc["raw_encoding"] == "base64"
    assert base64.b64decode(doc["raw"]) == raw
