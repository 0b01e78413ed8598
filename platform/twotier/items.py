"""Item data: the attributes of a project's items (genres, title, content type).

Item data lives in the online store collection ``naming.online_collection(project,
"content")``, one document per item, written with upserts (loading twice is a no-op)::

    {"_id": "31", "title": "Dangerous Minds (1995)", "genres": ["Drama"], "year": "1995"}
    {"_id": "m17", "content_type": "gif"}

``movielens_items`` reads MovieLens ``movies.csv``; ``twotier.generate`` makes the
items of the synthetic meme feed. ``all_items`` reads a project's items back, e.g. for
the ``items_offline`` asset that copies them into the offline store's items table.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.naming import online_collection

CONTENT_GROUP = "content"
"""The name under which item data is stored (``<project>__content`` online)."""

NO_GENRES = "(no genres listed)"
"""How MovieLens marks a movie without genres; loaded as an empty list."""

_YEAR = re.compile(r"\((\d{4})\)\s*$")
"""A MovieLens title's release year: ``Heat (1995)``."""
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# FerretDB v1 keeps one SQLite connection per filtered update until the command ends
# (pool of 100), so upserts go in commands of at most this many statements.
_STATEMENTS_PER_COMMAND = 50
_READ_CHUNK = 1000


class ItemDataError(TwotierError):
    """Item data could not be read or written; the message names the item or file."""


class Item(BaseModel):
    """One item and its attributes (string or list of strings each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    attributes: dict[str, str | list[str]] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _field_names(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for name in value:
            if not _ATTRIBUTE.match(name):
                raise ValueError(
                    f"invalid attribute name {name!r}: use a letter then letters, digits or "
                    "'_' (no dots, '$' or leading '_': MongoDB/FerretDB field rules)"
                )
        return value


def movielens_items(dataset_dir: Path) -> list[Item]:
    """The movies of ``dataset_dir/movies.csv`` with ``title``, ``genres`` (a list) and
    ``year`` (from the title's ``(1995)``; absent when the title has none).

    Raises:
        FileNotFoundError: ``movies.csv`` is missing.
        ItemDataError: A row is malformed; the message names the line.
    """
    path = Path(dataset_dir) / "movies.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point dataset_dir at a MovieLens folder")
    items: list[Item] = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                genres = [] if row["genres"] == NO_GENRES else row["genres"].split("|")
                attributes: dict[str, str | list[str]] = {
                    "title": row["title"],
                    "genres": genres,
                }
                year = _YEAR.search(row["title"])
                if year:
                    attributes["year"] = year.group(1)
                items.append(Item(item_id=str(int(row["movieId"])), attributes=attributes))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ItemDataError(f"{path}:{line}: not a MovieLens movie row: {row}") from exc
    return items


def _client(settings: Settings) -> Any:
    from pymongo import MongoClient

    return MongoClient(settings.online_store_uri, serverSelectionTimeoutMS=10_000)


def load_items(settings: Settings, project: str, items: Iterable[Item]) -> int:
    """Upsert item attributes into the project's online ``content`` collection.

    Reads the stored documents first (one query per 1,000 ids), inserts the missing
    ones in bulk and ``$set``s only the attributes that differ, so loading the same
    items again writes nothing, and attributes not mentioned are kept.

    Args:
        settings: Where the online store is.
        project: The project owning the items.
        items: The items; a later duplicate id wins; one without attributes writes nothing.

    Returns:
        How many items were inserted or changed.

    Raises:
        ItemDataError: The online store is unreachable or refused a write.
    """
    from pymongo import UpdateOne
    from pymongo.errors import BulkWriteError, PyMongoError

    collection_name = online_collection(project, CONTENT_GROUP)
    latest = {item.item_id: dict(item.attributes) for item in items if item.attributes}
    ids = list(latest)
    client = _client(settings)
    written = 0
    try:
        collection = client[settings.online_store.database][collection_name]
        for start in range(0, len(ids), _READ_CHUNK):
            chunk = ids[start : start + _READ_CHUNK]
            stored = {doc["_id"]: doc for doc in collection.find({"_id": {"$in": chunk}})}
            new_ids = [i for i in chunk if i not in stored]
            changed = [
                UpdateOne({"_id": i}, {"$set": latest[i]}, upsert=True)
                for i in chunk
                if i in stored and any(stored[i].get(k) != v for k, v in latest[i].items())
            ]
            if new_ids:
                try:
                    collection.insert_many([{"_id": i, **latest[i]} for i in new_ids])
                except BulkWriteError:
                    # Another loader inserted some of them meanwhile: upsert them all.
                    changed += [
                        UpdateOne({"_id": i}, {"$set": latest[i]}, upsert=True) for i in new_ids
                    ]
                    new_ids = []
            for first in range(0, len(changed), _STATEMENTS_PER_COMMAND):
                collection.bulk_write(
                    changed[first : first + _STATEMENTS_PER_COMMAND], ordered=True
                )
            written += len(new_ids) + len(changed)
    except PyMongoError as exc:
        raise ItemDataError(
            f"cannot load item data into {collection_name!r} at {settings.online_store_uri}: "
            f"{exc} (is FerretDB/MongoDB running? `twotier up`; loading again is safe)"
        ) from exc
    finally:
        client.close()
    return written


def read_items(settings: Settings, project: str, item_ids: Sequence[str]) -> dict[str, Item]:
    """The stored attributes of ``item_ids`` (one round trip); unknown ids are left out.

    Raises:
        ItemDataError: The online store is unreachable.
    """
    from pymongo.errors import PyMongoError

    collection_name = online_collection(project, CONTENT_GROUP)
    wanted = list(dict.fromkeys(item_ids))
    if not wanted:
        return {}
    client = _client(settings)
    try:
        docs = list(
            client[settings.online_store.database][collection_name].find({"_id": {"$in": wanted}})
        )
    except PyMongoError as exc:
        raise ItemDataError(f"cannot read item data from {collection_name!r}: {exc}") from exc
    finally:
        client.close()
    return {
        str(doc["_id"]): Item(
            item_id=str(doc["_id"]),
            attributes={k: v for k, v in doc.items() if not k.startswith("_")},
        )
        for doc in docs
    }


def all_items(settings: Settings, project: str, batch_size: int = 5_000) -> list[Item]:
    """Every item of the project's ``content`` collection, in id order.

    Reads in pages of ``batch_size`` ids (``_id > last``), so a large catalogue is never
    one response. Attribute values that are neither strings nor lists of strings (a
    number written by another tool) are kept as strings.

    Raises:
        ItemDataError: The online store is unreachable.
    """
    from pymongo.errors import PyMongoError

    collection_name = online_collection(project, CONTENT_GROUP)
    client = _client(settings)
    items: list[Item] = []
    try:
        collection = client[settings.online_store.database][collection_name]
        last: Any = None
        while True:
            query = {} if last is None else {"_id": {"$gt": last}}
            docs = list(collection.find(query).sort("_id", 1).limit(batch_size))
            for doc in docs:
                items.append(Item(item_id=str(doc["_id"]), attributes=_attributes(doc)))
            if len(docs) < batch_size:
                break
            last = docs[-1]["_id"]
    except PyMongoError as exc:
        raise ItemDataError(f"cannot read item data from {collection_name!r}: {exc}") from exc
    finally:
        client.close()
    return items


def _attributes(doc: dict[str, Any]) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for name, value in doc.items():
        if name.startswith("_") or not _ATTRIBUTE.match(name) or value is None:
            continue
        out[name] = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
    return out


def items_frame(items: Iterable[Item]) -> Any:
    """Items as the offline store's items frame (``item_id``, ``attributes``).

    Example:
        >>> items_frame([Item(item_id="31", attributes={"genres": ["Drama"]})]).to_dict("list")
        {'item_id': ['31'], 'attributes': [{'genres': ['Drama']}]}
    """
    import pandas as pd

    listed = list(items)
    return pd.DataFrame(
        {
            "item_id": [i.item_id for i in listed],
            "attributes": [dict(i.attributes) for i in listed],
        }
    )
