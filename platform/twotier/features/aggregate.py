"""From events to online-store updates of one feature group: shared by streaming and batch.

``aggregate`` turns a micro-batch of events into, per entity id, the ``$inc`` amounts of
every counter and sum and the ``$max`` of every last-seen time. It is a pure function on
plain data (events or dicts in, dicts out), so the Spark job can run the same logic in
``mapPartitions`` on ``row.asDict()`` and merge partial results with ``GroupUpdates.merge``.

Example:
    >>> from twotier.events import Event
    >>> from twotier.features.builtin import builtin_projects
    >>> group = builtin_projects()["movielens"].group("item_stats")
    >>> events = [
    ...     Event(event_id="a", project="movielens", user_id="1", item_id="31",
    ...           action="view", value=2.5, ts=1_000),
    ...     Event(event_id="b", project="movielens", user_id="2", item_id="31",
    ...           action="view", value=4.0, ts=3_000),
    ... ]
    >>> updates = aggregate(group, events)
    >>> updates.increments
    {'31': {'views': 2, 'rating_sum': 6.5}}
    >>> updates.maxima
    {'31': {'last_view_ts': 3000.0}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twotier.features.spec import (
    CounterFeature,
    Entity,
    FeatureGroup,
    LastSeenFeature,
    value_field,
)

if TYPE_CHECKING:
    from twotier.events import Event

PAIR_SEPARATOR = "|"
"""Joins user and item id into the id of a user-item entity: ``"<user_id>|<item_id>"``."""


def entity_id(entity: Entity, user_id: str, item_id: str) -> str:
    """The online-store id of the entity an event (or a read) is about.

    Args:
        entity: The feature group's entity: ``user``, ``item`` or ``user_item``.
        user_id: The user's id.
        item_id: The item's id.

    Returns:
        ``user_id``, ``item_id``, or ``"<user_id>|<item_id>"`` for ``user_item``.

    Raises:
        ValueError: ``entity`` is none of the three.

    Example:
        >>> entity_id("user_item", "7", "31")
        '7|31'
    """
    if entity == "user":
        return user_id
    if entity == "item":
        return item_id
    if entity == "user_item":
        return f"{user_id}{PAIR_SEPARATOR}{item_id}"
    raise ValueError(f"unknown entity {entity!r}: use 'user', 'item' or 'user_item'")


@dataclass
class GroupUpdates:
    """What a batch of events does to one feature group's documents.

    Attributes:
        increments: Per entity id, the amount to ``$inc`` per stored field (counts are
            ints, sums floats).
        maxima: Per entity id, the value to ``$max`` per last-seen field (event time, ms).
    """

    increments: dict[str, dict[str, float]] = field(default_factory=dict)
    maxima: dict[str, dict[str, float]] = field(default_factory=dict)

    def entity_ids(self) -> list[str]:
        """Every entity id the updates touch, increments first, in first-seen order."""
        return list(dict.fromkeys([*self.increments, *self.maxima]))

    def merge(self, other: GroupUpdates) -> GroupUpdates:
        """Add ``other`` into this one (sums add, maxima take the larger); returns ``self``."""
        for eid, fields in other.increments.items():
            mine = self.increments.setdefault(eid, {})
            for name, amount in fields.items():
                mine[name] = mine.get(name, 0) + amount
        for eid, fields in other.maxima.items():
            mine = self.maxima.setdefault(eid, {})
            for name, value in fields.items():
                if name not in mine or value > mine[name]:
                    mine[name] = value
        return self

    def __bool__(self) -> bool:
        return bool(self.increments or self.maxima)


def _plan(
    group: FeatureGroup,
) -> tuple[dict[str, list[CounterFeature]], dict[str, list[LastSeenFeature]]]:
    """The group's raw features indexed by the action that feeds them."""
    counters: dict[str, list[CounterFeature]] = {}
    last_seen: dict[str, list[LastSeenFeature]] = {}
    for f in group.raw_features():
        if isinstance(f, CounterFeature):
            counters.setdefault(f.action, []).append(f)
        else:
            last_seen.setdefault(f.action, []).append(f)
    return counters, last_seen


def _get(event: Event | Mapping[str, Any], name: str) -> Any:
    return event.get(name) if isinstance(event, Mapping) else getattr(event, name)


def aggregate(group: FeatureGroup, events: Iterable[Event | Mapping[str, Any]]) -> GroupUpdates:
    """The ``$inc`` and ``$max`` updates a batch of events makes to one feature group.

    Per event, the entity id comes from ``entity_id(group.entity, user_id, item_id)``.
    A ``count`` counter adds 1 and a ``sum`` counter adds the event's ``value`` for every
    event of its action (times ``decay_weight(ts)`` for a decayed one); with ``by``, the
    event's ``context[by]`` picks the field ``<name>__<value>``, and values not declared
    in ``values`` (or a missing key) add nothing. A last-seen feature keeps the largest
    ``ts`` of its action. Events of actions the group does not count leave no trace (no
    empty documents).

    Args:
        group: The feature group.
        events: ``Event`` objects, or mappings with the same keys (``user_id``,
            ``item_id``, ``action``, ``value``, ``ts``, optional ``context``), e.g. Spark
            ``row.asDict()``. Events are assumed valid (``parse_event`` checked them).

    Returns:
        Per entity id, increments and maxima; empty when no event feeds the group.
    """
    counters, last_seen = _plan(group)
    out = GroupUpdates()
    for event in events:
        action = _get(event, "action")
        feeds = counters.get(action)
        seen = last_seen.get(action)
        if not feeds and not seen:
            continue
        eid = entity_id(group.entity, _get(event, "user_id"), _get(event, "item_id"))
        for f in feeds or ():
            if f.by is not None:
                context = _get(event, "context") or {}
                value = context.get(f.by)
                if value not in f.values:
                    continue
                name = value_field(f.name, value)
            else:
                name = f.name
            amount: float = 1 if f.agg == "count" else float(_get(event, "value"))
            if f.half_life_days is not None:
                amount *= f.decay_weight(_get(event, "ts"))
            fields = out.increments.setdefault(eid, {})
            fields[name] = fields.get(name, 0) + amount
        for s in seen or ():
            ts = float(_get(event, "ts"))
            maxima = out.maxima.setdefault(eid, {})
            if ts > maxima.get(s.name, float("-inf")):
                maxima[s.name] = ts
    return out
