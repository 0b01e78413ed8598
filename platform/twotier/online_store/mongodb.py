"""The online store on the MongoDB wire protocol (FerretDB locally, MongoDB in production)."""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from typing import Any

from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.errors import BulkWriteError, CollectionInvalid, PyMongoError
from pymongo.write_concern import WriteConcern

from twotier.config import MongoDBOnlineStoreConfig, Settings
from twotier.online_store.base import (
    ApplyResult,
    OnlineStore,
    OnlineStoreCapabilities,
    OnlineStoreError,
    Read,
    check_batch_key,
    check_field_name,
    check_increments,
)

log = logging.getLogger(__name__)

BATCHES_FIELD = "_batch"
"""Per writer (batch key), the last batch id applied to the document."""

_TRANSACTION_STATEMENTS = 5_000
"""Updates per transaction at most (MongoDB keeps a transaction's writes in memory)."""
_READ_TAG = "_twotier_read"
"""Added to each document of a union read: the position of the read it answers."""
_DUPLICATE_KEY = 11000
_ATTEMPTS = 3
_READ_CHUNK = 5_000
"""Ids per existence read."""
_INSERT_CHUNK = 1_000
"""Documents per insert command."""


# What each kind of server declares (``online_store.server``); the hot paths follow these
# flags, never the server's name. A real MongoDB has transactions and change streams only
# as a replica set, which ``hello`` tells.
DECLARED_CAPABILITIES: dict[str, OnlineStoreCapabilities] = {
    "mongodb": OnlineStoreCapabilities(transactions=True, change_streams=True),
    # SecantusDB 0.5.3 evaluates a $match inside $unionWith by scanning the collection
    # (measured: 476 ms for 500 ids of 20,000 against 8 ms for the same find).
    "secantusdb": OnlineStoreCapabilities(
        transactions=True, change_streams=True, union_reads=False
    ),
    # FerretDB v1 (SQLite) scans the collection for $in and for every filtered update,
    # stops an "unordered" batch at its first error, omits nModified, lacks $unionWith,
    # and keeps one SQLite connection per update statement until the command ends (at
    # its pool size of 100 a larger command deadlocks).
    "ferretdb": OnlineStoreCapabilities(
        transactions=False,
        change_streams=False,
        indexed_in=False,
        bulk_upsert=False,
        union_reads=False,
        statements_per_command=50,
    ),
}


def declared_capabilities(settings: Settings, replica_set: bool) -> OnlineStoreCapabilities:
    """The capabilities of ``settings.online_server_kind`` with the configured overrides.

    Args:
        settings: Uses ``online_server_kind`` and ``online_store.capabilities``.
        replica_set: Whether the server said it is a replica-set member (``hello``);
            without one there are neither transactions nor change streams.
    """
    config = settings.online_store
    declared = DECLARED_CAPABILITIES[settings.online_server_kind]
    if not replica_set:
        declared = replace(declared, transactions=False, change_streams=False)
    overrides = config.capabilities.model_dump(exclude_none=True)
    return replace(declared, **overrides)


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

    Every document gets one ``$inc`` + ``$max`` + ``$set`` whose filter is a
    compare-and-set on ``_batch.<writer>`` (missing or lower than the batch id). How a
    batch reaches the server follows the declared capabilities:

    * ``bulk_upsert`` (MongoDB, SecantusDB): one unordered ``bulk_write`` of those
      updates with ``upsert``, no read first. An already-applied document does not
      match, so its upsert collides with the existing ``_id``: the duplicate-key error
      *is* the "skipped". Only those ids are then read back, to tell a replay from an
      insert race with another writer (which is retried).
    * otherwise (FerretDB v1): one existence read, new entities inserted whole with the
      batch marker, then the compare-and-set updates in ordered commands of
      ``statements_per_command``. FerretDB v1 scans the collection for every upsert,
      stops an "unordered" batch at its first error and omits ``nModified``.

    No transactions or change streams are needed for exactly once.
    """

    def __init__(
        self,
        client: MongoClient[dict[str, Any]],
        database: str,
        declared: OnlineStoreCapabilities | None = None,
        *,
        journal: bool = True,
        batch_transactions: bool = True,
    ) -> None:
        """Use ``client``'s ``database``; the store closes the client in ``close()``.

        Args:
            client: The pymongo client.
            database: The database of the feature collections.
            declared: What the server can do (default: a real MongoDB's); transactions
                and change streams are dropped when the server is no replica set.
            journal: Acknowledge writes only once they are journaled (``j: true``).
            batch_transactions: Write each chunk of a batch in one transaction where the
                server has transactions (one journal flush per chunk).
        """
        self._client = client
        self._declared = declared or DECLARED_CAPABILITIES["mongodb"]
        self._batch_transactions = batch_transactions
        # The client's write concern (e.g. w=majority from the URI), journaled if asked.
        inherited = dict(client.write_concern.document)
        if journal:
            inherited["j"] = True
        self._write_concern = WriteConcern(**inherited)
        self._db = client.get_database(database, write_concern=self._write_concern)

    @classmethod
    def from_settings(cls, settings: Settings, **client_kwargs: Any) -> MongoDBOnlineStore:
        """Connect to ``settings.online_store_uri`` (the local SecantusDB by default).

        Args:
            settings: Uses ``online_store`` (a ``MongoDBOnlineStoreConfig``), the local
                server's address and ``online_server_kind`` for the declared capabilities.
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
        return cls(
            client,
            config.database,
            declared_capabilities(settings, replica_set=True),
            journal=config.journal,
            batch_transactions=config.batch_transactions,
        )

    # -- lifecycle -----------------------------------------------------------

    @cached_property
    def _caps(self) -> OnlineStoreCapabilities:
        try:
            hello = self._client.admin.command("hello")
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"online store unreachable: {exc} (is the MongoDB-wire server running? "
                "`twotier up`, or check online_store.uri)"
            ) from exc
        if "setName" in hello:
            return self._declared
        return replace(self._declared, transactions=False, change_streams=False)

    @property
    def capabilities(self) -> OnlineStoreCapabilities:
        """The declared capabilities; transactions and change streams need a replica set."""
        return self._caps

    @cached_property
    def _readers(self) -> ThreadPoolExecutor:
        """Threads that overlap the finds of one ``get_groups`` (pymongo is thread-safe)."""
        return ThreadPoolExecutor(4, "twotier-online-read")

    def close(self) -> None:
        if "_readers" in self.__dict__:
            self._readers.shutdown(wait=True)
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
        marker = f"{BATCHES_FIELD}.{batch_key}"
        updates: dict[str, dict[str, Any]] = {}
        for i in ids:
            update: dict[str, Any] = {"$set": {marker: batch_id}}
            if counters.get(i):
                update["$inc"] = counters[i]
            if highest.get(i):
                update["$max"] = highest[i]
            updates[i] = update
        label = f"{batch_key}/{batch_id}"
        if self.capabilities.bulk_upsert:
            written = self._apply_bulk(collection, marker, batch_id, updates, label)
        else:
            written = self._apply_read_first(
                collection, batch_key, batch_id, updates, counters, highest, label
            )
        return ApplyResult(batch_id, len(ids), written, len(ids) - written)

    def _apply_bulk(
        self,
        collection: str,
        marker: str,
        batch_id: int,
        updates: Mapping[str, dict[str, Any]],
        batch: str,
    ) -> int:
        """Compare-and-set upserts in unordered bulks; returns the documents written.

        "$not $gte" also matches a document without a marker for this writer. A
        document that has this batch already does not match; its upsert then collides
        with the existing ``_id``. The colliding ids are read back: those marked with
        this batch (or a later one) were already applied, the others were inserted by
        another writer meanwhile and are updated in the next attempt.

        Where the server has transactions (and ``online_store.batch_transactions``), each
        chunk is first tried as one transaction: one journal flush for the chunk instead
        of one per document, which is what durable commits (``--sync-on-commit``) cost.
        A chunk whose transaction fails (a replayed document's duplicate key aborts it,
        so nothing of it was written) goes the per-document way below.
        """

        def ops(ids: list[str]) -> list[UpdateOne]:
            return [
                UpdateOne({"_id": i, marker: {"$not": {"$gte": batch_id}}}, updates[i], upsert=True)
                for i in ids
            ]

        written = 0
        pending = list(updates)
        size = self.capabilities.statements_per_command
        if self._batch_transactions and self.capabilities.transactions:
            rest: list[str] = []
            for chunk in _chunks(pending, min(size, _TRANSACTION_STATEMENTS)):
                done = self._bulk_in_transaction(collection, ops(chunk))
                if done is None:
                    rest += chunk
                else:
                    written += done
            pending = rest
        for attempt in range(1, _ATTEMPTS + 1):
            if not pending:
                return written
            collided: list[str] = []
            for chunk in _chunks(pending, size):
                written_now, collided_now = self._bulk(collection, ops(chunk), chunk, batch)
                written += written_now
                collided += collided_now
            if not collided:
                return written
            applied = self._applied(collection, collided, marker, batch_id, batch)
            pending = [i for i in collided if i not in applied]
            if not pending:
                return written
            log.info(
                "online store: %d insert race(s) on %s in batch %s, retrying (attempt %d)",
                len(pending),
                collection,
                batch,
                attempt,
            )
        raise OnlineStoreError(
            f"write of batch {batch} to {collection!r} kept colliding for ids {pending[:5]} "
            f"after {_ATTEMPTS} attempts (the batch is safe to replay)"
        )

    def _bulk_in_transaction(self, collection: str, ops: list[UpdateOne]) -> int | None:
        """One bulk in one transaction; the documents written, or None if it was not applied.

        Any failure (a duplicate key of an already-applied document, a write conflict
        with another writer, an unknown commit result) gives None: the caller re-sends
        those documents one compare-and-set each, which skips whatever did commit.
        """
        try:
            with self._client.start_session() as session:
                with session.start_transaction(write_concern=self._write_concern):
                    result = self._db[collection].bulk_write(ops, ordered=False, session=session)
                return result.matched_count + result.upserted_count
        except PyMongoError as exc:
            log.debug("online store: transaction of %d updates not applied (%s)", len(ops), exc)
            return None

    def _bulk(
        self, collection: str, ops: list[UpdateOne], ids: list[str], batch: str
    ) -> tuple[int, list[str]]:
        """One unordered bulk; returns (documents written, ids whose upsert collided)."""
        try:
            result = self._db[collection].bulk_write(ops, ordered=False)
            return result.matched_count + result.upserted_count, []
        except BulkWriteError as exc:
            details = exc.details
            collided: list[str] = []
            for error in details.get("writeErrors") or []:
                entity_id = ids[int(error.get("index", 0))]
                if error.get("code") != _DUPLICATE_KEY:
                    raise OnlineStoreError(
                        f"write of batch {batch} to {collection!r} failed for id "
                        f"{entity_id!r}: {error.get('errmsg')} (the batch is safe to replay)"
                    ) from exc
                collided.append(entity_id)
            written = int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0))
            return written, collided
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot write batch {batch} to {collection!r}: {exc} (safe to replay)"
            ) from exc

    def _applied(
        self, collection: str, ids: list[str], marker: str, batch_id: int, batch: str
    ) -> set[str]:
        """Which of ``ids`` carry ``batch_id`` (or a later batch) under ``marker``."""
        try:
            cursor = self._db[collection].find(
                {"_id": {"$in": ids}, marker: {"$gte": batch_id}}, {"_id": 1}
            )
            return {str(doc["_id"]) for doc in cursor}
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot read {collection!r} for batch {batch}: {exc} (safe to replay)"
            ) from exc

    def _apply_read_first(
        self,
        collection: str,
        batch_key: str,
        batch_id: int,
        updates: Mapping[str, dict[str, Any]],
        counters: Mapping[str, Mapping[str, float]],
        highest: Mapping[str, Mapping[str, float]],
        batch: str,
    ) -> int:
        """Existence read, bulk insert of new entities, ordered CAS updates of the rest.

        New entities are inserted whole, with this batch's marker: one bulk insert
        instead of an upsert each (FerretDB v1 scans the collection for every update
        statement). A replay finds them present and marked, so they are not counted twice.
        """
        marker = f"{BATCHES_FIELD}.{batch_key}"
        ids = list(updates)
        present = self._existing(collection, ids, batch)
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
            batch,
        )
        cas = [
            {"q": {"_id": i, marker: {"$not": {"$gte": batch_id}}}, "u": updates[i]}
            for i in ids
            if i in present or i in raced
        ]
        updated = sum(
            self._update(collection, chunk, batch)
            for chunk in _chunks(cas, self.capabilities.statements_per_command)
        )
        return inserted + updated

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
        applies those through the compare-and-set update instead. FerretDB v1 stops an
        "unordered" insert at its first error, so the documents after the last reported
        error that the reply does not account for are sent again.
        """
        inserted, raced = 0, set()
        for chunk in _chunks(docs, _INSERT_CHUNK):
            remaining = chunk
            while remaining:
                reply = self._write_command(
                    "insert", collection, batch, documents=remaining, ordered=False
                )
                n = int(reply.get("n", 0))
                inserted += n
                errors = reply.get("writeErrors") or []
                for error in errors:
                    entity_id = str(remaining[int(error.get("index", 0))]["_id"])
                    if error.get("code") != _DUPLICATE_KEY:
                        raise OnlineStoreError(
                            f"write of batch {batch} to {collection!r} failed for id "
                            f"{entity_id!r}: {error.get('errmsg')} (the batch is safe to replay)"
                        )
                    raced.add(entity_id)
                if not errors or n + len(errors) >= len(remaining):
                    break
                remaining = remaining[max(int(e.get("index", 0)) for e in errors) + 1 :]
        return inserted, raced

    def _write_command(
        self, name: str, collection: str, batch: str, **fields: Any
    ) -> dict[str, Any]:
        """One raw write command with the store's write concern (raw commands lack it)."""
        try:
            reply: dict[str, Any] = self._db.command(
                name, collection, writeConcern=self._write_concern.document, **fields
            )
        except PyMongoError as exc:
            raise OnlineStoreError(
                f"cannot write batch {batch} to {collection!r}: {exc} (safe to replay)"
            ) from exc
        return reply

    def _update(self, collection: str, statements: list[dict[str, Any]], batch: str) -> int:
        """Run one ordered ``update`` command; return how many documents matched or upserted.

        A duplicate ``_id`` can only come from an upsert (``set_fields``) racing another
        writer's insert of the same new document; the document then exists, and the
        command is retried (every statement in it is idempotent).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            reply = self._write_command(
                "update", collection, batch, updates=statements, ordered=True
            )
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

    def get_groups(self, reads: Sequence[Read]) -> list[dict[str, dict[str, float]]]:
        """One aggregation with ``$unionWith`` where the server declares ``union_reads``.

        Each read becomes a ``$match`` + ``$project`` stage, tagged with its position, so
        the answers of several collections come back in one round trip. Elsewhere the
        finds are sent concurrently (SecantusDB 0.5.3 answers a ``$match`` inside
        ``$unionWith`` by scanning the collection, so it declares no ``union_reads``).
        """
        answers: list[dict[str, dict[str, float]]] = [{} for _ in reads]
        active = [(n, r) for n, r in enumerate(reads) if r.ids]
        if len(active) < 2 or not self.capabilities.union_reads:
            # One find per collection, all in flight at once (one alone: no thread hop).
            if len(active) == 1:
                n, r = active[0]
                answers[n] = self.get_many(r.collection, r.ids, r.fields)
                return answers
            futures = [
                (n, self._readers.submit(self.get_many, r.collection, r.ids, r.fields))
                for n, r in active
            ]
            for n, future in futures:
                answers[n] = future.result()
            return answers

        def stages(n: int, read: Read) -> list[dict[str, Any]]:
            ids = list(dict.fromkeys(read.ids))
            if read.fields is None:
                projection: dict[str, Any] = {BATCHES_FIELD: 0}
            else:
                projection = {check_field_name(name): 1 for name in read.fields}
            return [
                {"$match": {"_id": {"$in": ids}}},
                {"$project": projection},
                {"$addFields": {_READ_TAG: n}},
            ]

        (first_n, first), *rest = active
        pipeline = stages(first_n, first)
        pipeline += [
            {"$unionWith": {"coll": r.collection, "pipeline": stages(n, r)}} for n, r in rest
        ]
        try:
            docs = list(self._db[first.collection].aggregate(pipeline))
        except PyMongoError as exc:
            names = sorted({r.collection for _, r in active})
            raise OnlineStoreError(f"cannot read {names}: {exc}") from exc
        for doc in docs:
            n = int(doc.pop(_READ_TAG))
            answers[n][str(doc.pop("_id"))] = {
                k: v for k, v in doc.items() if not k.startswith("_")
            }
        return answers

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
        size = self.capabilities.statements_per_command
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
