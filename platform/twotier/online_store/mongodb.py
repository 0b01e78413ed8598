"""The online store on the MongoDB wire protocol (FerretDB locally, MongoDB in production)."""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.errors import CollectionInvalid, PyMongoError

from twotier.config import MongoDBOnlineStoreConfig, Settings
from twotier.online_store.base import (
    ApplyResult,
    OnlineStore,
    OnlineStoreCapabilities,
    OnlineStoreError,
    check_batch_key,
    check_field_name,
    check_increments,
)

log = logging.getLogger(__name__)

BATCHES_FIELD = "_batch"
"""Per writer (batch key), the last batch id applied to the document."""

_DUPLICATE_KEY = 11000
_ATTEMPTS = 3
_READ_CHUNK = 5_000
"""Ids per existence read."""
_INSERT_CHUNK = 1_000
"""Documents per insert command."""


@dataclass(frozen=True)
class _Server:
    """What the connected server is, and how many statements one write command may hold."""

    ferretdb: bool
    replica_set: bool
    statements_per_command: int


# FerretDB v1 (SQLite) keeps one SQLite connection open per filtered update statement
# until the whole command ends; at its pool size of 100 a larger command deadlocks.
_FERRETDB_STATEMENTS = 50
_MONGODB_STATEMENTS = 10_000


def _number(value: Any) -> int | float:
    """A BSON-friendly number (numpy and Decimal values become int or float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OnlineStoreError(f"invalid increment {value!r}: use an int or float")
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MongoDBOnlineStore(OnlineStore):
    """Online features in MongoDB-wire collections, one document per entity.

    Stored document shape (collection ``<project>__<feature group>``)::

        {
            "_id": "42",                        # entity id, always a string
            "views": 17, "smiles": 6,           # raw counters, only ever $inc'ed
            "dislikes": 1, "rating_sum": 61.5,
            "last_view_ts": 1700000000000,      # last-seen times, only ever $max'ed
            "_batch": {"online-3f2a9c0d": 12},  # per writer: last applied batch id
        }

    Fields starting with ``_`` are bookkeeping and never returned by ``get_many``.

    A batch is written in two steps, neither of which reads first:

    1. every document is upserted by ``_id`` alone with ``$setOnInsert`` (creates the
       missing ones; never conflicts with an existing one);
    2. every document gets one ``$inc`` + ``$max`` + ``$set`` whose filter is a
       compare-and-set on ``_batch.<writer>`` (missing or lower than the batch id).

    A replayed batch is then a plain non-match rather than a duplicate-key error.
    That matters on FerretDB v1, which stops an "unordered" batch at its first error
    and omits ``nModified`` from the reply, so per-operation error handling cannot
    work there. No transactions or change streams are needed (FerretDB v1 has neither).
    """

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        """Use ``client``'s ``database``; the store closes the client in ``close()``."""
        self._client = client
        self._db = client[database]

    @classmethod
    def from_settings(cls, settings: Settings, **client_kwargs: Any) -> MongoDBOnlineStore:
        """Connect to ``settings.online_store_uri`` (the local FerretDB by default).

        Args:
            settings: Uses ``online_store`` (a ``MongoDBOnlineStoreConfig``) and ``ferretdb``.
            **client_kwargs: Passed to ``MongoClient`` (e.g. ``event_listeners``).

        Returns:
            The store; the connection is opened lazily on first use.
        """
        config = settings.online_store
        if not isinstance(config, MongoDBOnlineStoreConfig):
            raise OnlineStoreError(f"online_store.type is {config.type!r}, not 'mongodb'")
        client_kwargs.setdefault("serverSelectionTimeoutMS", 10_000)
        client_kwargs.setdefault("socketTimeoutMS", 120_000)
        client: MongoClient[dict[str, Any]] = MongoClient(
            settings.online_store_uri, tz_aware=True, **client_kwargs
        )
        return cls(client, config.database)

    # -- lifecycle -----------------------------------------------------------

    @cached_property
    def _server(self) -> _Server:
        try:
            build = self._client.admin.command("buildInfo")
            hello = self._client.admin.command("hello")
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"online store unreachable: {exc} (is FerretDB/MongoDB running? `twotier up`)"
            ) from exc
        ferretdb = "ferretdbVersion" in build or "ferretdb" in build
        statements = _FERRETDB_STATEMENTS if ferretdb else _MONGODB_STATEMENTS
        return _Server(ferretdb, "setName" in hello, statements)

    @property
    def capabilities(self) -> OnlineStoreCapabilities:
        """FerretDB v1: neither; MongoDB: both when it runs as a replica set."""
        supported = self._server.replica_set and not self._server.ferretdb
        return OnlineStoreCapabilities(transactions=supported, change_streams=supported)

    def close(self) -> None:
        self._client.close()

    # -- schema --------------------------------------------------------------

    def ensure_indexes(self, collection: str, fields: Sequence[str] = ()) -> None:
        for name in fields:
            check_field_name(name)
        try:
            if collection not in self._db.list_collection_names(filter={"name": collection}):
                with contextlib.suppress(CollectionInvalid):  # created concurrently
                    self._db.create_collection(collection)
            for name in fields:
                self._db[collection].create_index([(name, ASCENDING)], name=f"{name}_1")
        except PyMongoError as exc:
            raise OnlineStoreError(f"cannot create indexes on {collection!r}: {exc}") from exc

    def drop(self, collection: str) -> None:
        try:
            self._db.drop_collection(collection)
        except PyMongoError as exc:
            raise OnlineStoreError(f"cannot drop {collection!r}: {exc}") from exc

    # -- writes --------------------------------------------------------------

    def apply_increments(
        self,
        collection: str,
        batch_key: str,
        batch_id: int,
        increments: Mapping[str, Mapping[str, float]],
        maxima: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ApplyResult:
        check_batch_key(batch_key)
        if isinstance(batch_id, bool) or not isinstance(batch_id, int) or batch_id < 0:
            raise OnlineStoreError(f"invalid batch id {batch_id!r}: use an int >= 0")
        check_increments(increments, maxima)
        counters = {
            entity_id: {k: _number(v) for k, v in fields.items()}
            for entity_id, fields in increments.items()
        }
        highest = {
            entity_id: {k: _number(v) for k, v in fields.items()}
            for entity_id, fields in (maxima or {}).items()
        }
        ids = list(dict.fromkeys([*counters, *highest]))
        if not ids:
            return ApplyResult(batch_id, 0, 0, 0)
        label = f"{batch_key}/{batch_id}"
        marker = f"{BATCHES_FIELD}.{batch_key}"
        # New entities are inserted whole, with this batch's marker: one bulk insert
        # instead of an upsert each (FerretDB v1 scans the collection for every update
        # statement). A replay finds them present and marked, so they are not counted twice.
        present = self._existing(collection, ids, label)
        fresh = [i for i in ids if i not in present]
        inserted, raced = self._insert_new(
            collection,
            [
                {
                    "_id": i,
                    **counters.get(i, {}),
                    **highest.get(i, {}),
                    BATCHES_FIELD: {batch_key: batch_id},
                }
                for i in fresh
            ],
            label,
        )
        cas = []
        for i in [i for i in ids if i in present or i in raced]:
            update: dict[str, Any] = {"$set": {marker: batch_id}}
            if counters.get(i):
                update["$inc"] = counters[i]
            if highest.get(i):
                update["$max"] = highest[i]
            # "$not $gte" also matches a document without a marker for this writer.
            cas.append({"q": {"_id": i, marker: {"$not": {"$gte": batch_id}}}, "u": update})
        updated = sum(
            self._update(collection, chunk, label)
            for chunk in _chunks(cas, self._server.statements_per_command)
        )
        written = inserted + updated
        return ApplyResult(batch_id, len(ids), written, len(ids) - written)

    def _existing(self, collection: str, ids: list[str], batch: str) -> set[str]:
        """Which of ``ids`` have a document already (one scan per chunk on FerretDB v1)."""
        found: set[str] = set()
        try:
            for chunk in _chunks(ids, _READ_CHUNK):
                cursor = self._db[collection].find({"_id": {"$in": chunk}}, {"_id": 1})
                found.update(str(doc["_id"]) for doc in cursor)
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot read {collection!r} for batch {batch}: {exc} (safe to replay)"
            ) from exc
        return found

    def _insert_new(
        self, collection: str, docs: list[dict[str, Any]], batch: str
    ) -> tuple[int, set[str]]:
        """Insert documents of new entities; returns (inserted, ids another writer created).

        An id inserted meanwhile by someone else fails with a duplicate key; the caller
        applies those through the compare-and-set update instead.
        """
        inserted, raced = 0, set()
        for chunk in _chunks(docs, _INSERT_CHUNK):
            try:
                reply = self._db.command("insert", collection, documents=chunk, ordered=False)
            except PyMongoError as exc:
                raise OnlineStoreError(
                    f"cannot write batch {batch} to {collection!r}: {exc} (safe to replay)"
                ) from exc
            inserted += int(reply.get("n", 0))
            for error in reply.get("writeErrors") or []:
                entity_id = str(chunk[int(error.get("index", 0))]["_id"])
                if error.get("code") != _DUPLICATE_KEY:
                    raise OnlineStoreError(
                        f"write of batch {batch} to {collection!r} failed for id "
                        f"{entity_id!r}: {error.get('errmsg')} (the batch is safe to replay)"
                    )
                raced.add(entity_id)
        return inserted, raced

    def _update(self, collection: str, statements: list[dict[str, Any]], batch: str) -> int:
        """Run one ordered ``update`` command; return how many documents matched or upserted.

        A duplicate ``_id`` can only come from an upsert (``set_fields``) racing another
        writer's insert of the same new document; the document then exists, and the
        command is retried (every statement in it is idempotent).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                reply = self._db.command("update", collection, updates=statements, ordered=True)
            except PyMongoError as exc:
                raise OnlineStoreError(
                    f"cannot write batch {batch} to {collection!r}: {exc} (safe to replay)"
                ) from exc
            errors = reply.get("writeErrors") or []
            if not errors:
                return int(reply.get("n", 0))
            first = errors[0]
            entity_id = statements[int(first.get("index", 0))]["q"]["_id"]
            if first.get("code") != _DUPLICATE_KEY or attempt == _ATTEMPTS:
                raise OnlineStoreError(
                    f"write of batch {batch} to {collection!r} failed for id {entity_id!r}: "
                    f"{first.get('errmsg')} (fix the document; the batch is safe to replay)"
                )
            log.info("online store: insert race on %s id %r, retrying", collection, entity_id)
        raise AssertionError("unreachable")

    # -- reads ---------------------------------------------------------------

    def get_many(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, float]]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        projection = None
        if fields is not None:
            projection = {"_id": 1, **{check_field_name(name): 1 for name in fields}}
        # One id: plain equality, which FerretDB v1 pushes down to an indexed SQL lookup
        # (it evaluates $in by scanning the whole collection); same answer on MongoDB.
        query = {"_id": wanted[0]} if len(wanted) == 1 else {"_id": {"$in": wanted}}
        try:
            # batch_size and limit = len(ids): the whole answer comes in the first reply.
            cursor = self._db[collection].find(
                query,
                projection,
                batch_size=len(wanted),
                limit=len(wanted),
            )
            docs = list(cursor)
        except PyMongoError as exc:
            raise OnlineStoreError(f"cannot read {collection!r}: {exc}") from exc
        if projection is not None:
            # The projection already left out the bookkeeping fields; only _id remains.
            return {str(doc.pop("_id")): doc for doc in docs}
        return {
            str(doc["_id"]): {k: v for k, v in doc.items() if not k.startswith("_")} for doc in docs
        }

    def sum_fields(self, collection: str, fields: Sequence[str]) -> tuple[int, dict[str, float]]:
        names = [check_field_name(name) for name in fields]
        totals = dict.fromkeys(names, 0.0)
        documents = 0
        try:
            # A projected scan: FerretDB v1 lacks parts of $group, and this is not a hot path.
            for doc in self._db[collection].find({}, {name: 1 for name in names} or {"_id": 1}):
                documents += 1
                for name in names:
                    value = doc.get(name)
                    if isinstance(value, numbers.Real) and not isinstance(value, bool):
                        totals[name] += float(value)
        except PyMongoError as exc:
            raise OnlineStoreError(f"cannot scan {collection!r}: {exc}") from exc
        return documents, totals

    # -- raw values and job state --------------------------------------------

    def set_fields(self, collection: str, values: Mapping[str, Mapping[str, float]]) -> int:
        check_increments(values)
        statements = [
            {
                "q": {"_id": entity_id},
                "u": {
                    "$set": {k: _number(v) for k, v in fields.items()},
                    "$setOnInsert": {BATCHES_FIELD: {}},
                },
                "upsert": True,
            }
            for entity_id, fields in values.items()
            if fields
        ]
        size = self._server.statements_per_command
        return sum(
            self._update(collection, chunk, "set_fields") for chunk in _chunks(statements, size)
        )

    def put_document(self, collection: str, doc_id: str, document: Mapping[str, Any]) -> None:
        try:
            self._db[collection].replace_one({"_id": doc_id}, dict(document), upsert=True)
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot store document {doc_id!r} in {collection!r}: {exc}"
            ) from exc

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        try:
            doc = self._db[collection].find_one({"_id": doc_id})
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot read document {doc_id!r} of {collection!r}: {exc}"
            ) from exc
        if doc is None:
            return None
        doc.pop("_id", None)
        return dict(doc)
