"""Events joined with item attributes, and the feature-group updates they make.

A ``by`` counter (e.g. ``smiles_by_type`` with ``by: content_type``) takes the value of
the event's ``context[by]`` when the producer sent one, else the item's attribute from
the project's online ``content`` collection (``twotier.items``): the attribute named
``by``, or its plural (``genre`` → ``genres``). A list attribute counts once per value,
so a Drama-Comedy movie adds one to both ``views_by_genre__Drama`` and ``__Comedy``.

Everything else is ``twotier.features.aggregate.aggregate``, unchanged: a ``by`` counter is
aggregated over the events expanded into one per value, every other feature over the
events as they are, and the partial results merged with ``GroupUpdates.merge``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.events import Event
from twotier.features.aggregate import GroupUpdates, aggregate
from twotier.features.spec import CounterFeature, FeatureGroup
from twotier.items import CONTENT_GROUP
from twotier.naming import online_collection

ItemAttributes = dict[str, dict[str, Any]]
"""Per item id, the attributes the job needs (e.g. ``{"genres": ["Drama"]}``)."""

LOOKUP_CHUNK = 1_000
"""Item ids per ``find`` round trip."""


class ItemLookupError(TwotierError):
    """The item attributes of a micro-batch could not be read."""


def attribute_names(by: str) -> tuple[str, ...]:
    """The item attributes that can answer a ``by`` key: itself, then its plural."""
    return (by, f"{by}s")


def by_values(by: str, event: Event, items: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The values of ``by`` for one event: its context value, else its item's attribute(s).

    Args:
        by: A ``by`` key such as ``content_type`` or ``genre``.
        event: The event.
        items: Item attributes by item id (items not found are simply absent).

    Returns:
        The values in order (several for a list attribute such as ``genres``); empty
        when neither the context nor the item says.
    """
    value = event.context.get(by)
    if value is not None:
        return [value]
    item = items.get(event.item_id) or {}
    for name in attribute_names(by):
        found = item.get(name)
        if isinstance(found, str):
            return [found]
        if isinstance(found, list | tuple):
            return [v for v in found if isinstance(v, str)]
    return []


@dataclass(frozen=True)
class GroupPlan:
    """One feature group split for ``aggregate``: plain features, and each ``by`` counter."""

    group: FeatureGroup
    plain: FeatureGroup | None
    by_counters: tuple[tuple[CounterFeature, FeatureGroup], ...]

    @classmethod
    def of(cls, group: FeatureGroup) -> GroupPlan:
        """Split ``group``; each part is ``group`` with a subset of its raw features."""
        raw = group.raw_features()
        plain = [f for f in raw if not (isinstance(f, CounterFeature) and f.by)]
        by = [f for f in raw if isinstance(f, CounterFeature) and f.by]
        return cls(
            group=group,
            plain=group.model_copy(update={"features": tuple(plain)}) if plain else None,
            by_counters=tuple((f, group.model_copy(update={"features": (f,)})) for f in by),
        )

    def needs_items(self, event: Event) -> bool:
        """True when a ``by`` counter of this group needs the item's attributes for ``event``."""
        return any(
            f.action == event.action and f.by not in event.context for f, _ in self.by_counters
        )

    def attributes(self) -> set[str]:
        """The item attributes this group's ``by`` counters may read."""
        return {name for f, _ in self.by_counters for name in attribute_names(str(f.by))}

    def updates(
        self, events: Sequence[Event], items: Mapping[str, Mapping[str, Any]]
    ) -> GroupUpdates:
        """The ``$inc``/``$max`` updates of ``events`` to this group (``aggregate`` semantics)."""
        out = GroupUpdates()
        if self.plain is not None:
            out.merge(aggregate(self.plain, events))
        for feature, part in self.by_counters:
            by = str(feature.by)
            expanded = (
                {
                    "user_id": e.user_id,
                    "item_id": e.item_id,
                    "action": e.action,
                    "value": e.value,
                    "ts": e.ts,
                    "context": {by: value},
                }
                for e in events
                if e.action == feature.action
                for value in by_values(by, e, items)
            )
            out.merge(aggregate(part, expanded))
        return out


def group_updates(
    group: FeatureGroup, events: Sequence[Event], items: Mapping[str, Mapping[str, Any]]
) -> GroupUpdates:
    """The updates ``events`` make to ``group``, ``by`` values enriched from ``items``.

    Equals ``aggregate(group, events)`` when every ``by`` value comes from the context.

    Example:
        >>> from twotier.features.spec import FeatureGroup
        >>> group = FeatureGroup.model_validate({"name": "g", "entity": "user", "features": [
        ...     {"name": "views", "kind": "counter", "action": "view",
        ...      "by": "genre", "values": ["Drama", "Comedy"]}]})
        >>> e = Event(event_id="a", project="p", user_id="7", item_id="31",
        ...           action="view", ts=1)
        >>> group_updates(group, [e], {"31": {"genres": ["Drama", "Comedy", "War"]}}).increments
        {'7': {'views__Drama': 1, 'views__Comedy': 1}}
    """
    return GroupPlan.of(group).updates(events, items)


# -- item lookups -----------------------------------------------------------------------

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client(uri: str) -> Any:
    """One ``MongoClient`` per URI and process (Spark reuses its Python workers)."""
    from pymongo import MongoClient

    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            client = _clients[uri] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
        return client


def lookup_items(
    settings: Settings, project: str, item_ids: Iterable[str], attributes: Iterable[str]
) -> ItemAttributes:
    """The ``attributes`` of just ``item_ids`` from the project's online ``content`` collection.

    One ``find({"_id": {"$in": ...}})`` per 1,000 ids, projected to ``attributes``; the
    collection is never scanned. Unknown ids are absent from the result.

    Raises:
        ItemLookupError: The online store is unreachable or refused the query.
    """
    from pymongo.errors import PyMongoError

    ids = list(dict.fromkeys(item_ids))
    wanted = sorted(set(attributes))
    if not ids or not wanted:
        return {}
    name = online_collection(project, CONTENT_GROUP)
    collection = _client(settings.online_store_uri)[settings.online_store.database][name]
    projection = {"_id": 1, **{a: 1 for a in wanted}}
    found: ItemAttributes = {}
    try:
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            for doc in collection.find({"_id": {"$in": chunk}}, projection, batch_size=len(chunk)):
                found[str(doc.pop("_id"))] = doc
    except PyMongoError as exc:
        raise ItemLookupError(
            f"cannot read item attributes of {len(ids)} items from {name!r} at "
            f"{settings.online_store_uri}: {exc}. Fix: start the online store (`twotier up`); "
            "the micro-batch is retried"
        ) from exc
    return found
