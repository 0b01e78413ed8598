"""The user-event schema carried on each project's Kafka topic, as JSON.

One event is one user action on one item at one time::

    {"event_id": "ml-1-31-964982703000-view", "project": "movielens", "user_id": "1",
     "item_id": "31", "action": "view", "value": 2.5, "ts": 964982703000, "context": {}}

``event_id`` is unique per event and stable across replays, so downstream
consumers de-duplicate by it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

KNOWN_ACTIONS: tuple[str, ...] = (
    "view",
    "smile",
    "dislike",
    "comment",
    "share",
    "rating",
    "recommendation",
)
"""Actions the demo projects emit, plus ``recommendation`` (one item served by
``/recommend``, logged by serving); projects may send others (any non-empty name)."""

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]


BadEventKind = Literal[
    "not_utf8",
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_project",
]
"""The category of a malformed message: what dead-letter counts are keyed by."""


class BadEvent(ValueError):
    """A raw message is not a valid event of a known project.

    Attributes:
        reason: Every problem found, in words (names the field and the value).
        kind: The category of the first problem, for counting.
    """

    def __init__(self, reason: str, kind: BadEventKind = "invalid_value") -> None:
        self.reason = reason
        self.kind: BadEventKind = kind
        super().__init__(f"bad event: {reason}")


class Event(BaseModel):
    """One user action on one item.

    Types are strict (``"42"`` is not an int and ``42`` is not a string), so a
    producer's mistakes surface here rather than as wrong features later.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    event_id: NonEmpty
    project: NonEmpty
    user_id: NonEmpty
    item_id: NonEmpty
    action: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    """What the user did: view, smile, dislike, comment, share, rating, ..."""
    value: float = 1.0
    """Strength of the action (the rating for ``view`` events of MovieLens)."""
    ts: int = Field(gt=0)
    """Event time in milliseconds since the Unix epoch."""
    context: dict[str, str] = Field(default_factory=dict)
    """Free-form string attributes (device, page, experiment group, ...)."""

    def to_json(self) -> str:
        """The compact JSON form sent to Kafka."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Event:
        """Parse the JSON form; raises ``pydantic.ValidationError`` when invalid."""
        return cls.model_validate_json(data)


_TYPE_ERRORS = ("_type", "_parsing")


def _kind(error: ValidationError) -> BadEventKind:
    first = error.errors(include_url=False)[0]["type"]
    if first == "json_invalid":
        return "bad_json"
    if first == "model_type":
        return "not_object"
    if first == "missing":
        return "missing_field"
    if first.endswith(_TYPE_ERRORS):
        return "wrong_type"
    return "invalid_value"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(p) for p in item["loc"]) or "<event>"
        if item["type"] == "missing":
            parts.append(f"missing field {field!r}")
        elif item["type"] == "model_type":
            parts.append(f"not a JSON object (got {type(item.get('input')).__name__})")
        elif item["type"] == "json_invalid":
            parts.append(f"not valid JSON ({item['msg']})")
        else:
            parts.append(f"field {field!r}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


def parse_event(raw: bytes | str, known_projects: Collection[str]) -> Event:
    """Validate one raw Kafka message as an event of one of ``known_projects``.

    Args:
        raw: The message value (UTF-8 JSON).
        known_projects: Projects whose events are accepted.

    Returns:
        The event.

    Raises:
        BadEvent: The message is not JSON, not an object, lacks a field, has a field of
            the wrong type, or belongs to an unknown project; ``reason`` says which and
            ``kind`` names the category.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadEvent(f"not UTF-8 ({exc.reason} at byte {exc.start})", "not_utf8") from exc
    try:
        event = Event.from_json(raw)
    except ValidationError as exc:
        raise BadEvent(_describe(exc), _kind(exc)) from exc
    if event.project not in known_projects:
        raise BadEvent(
            f"unknown project {event.project!r} (known: {', '.join(sorted(known_projects))})",
            "unknown_project",
        )
    return event
