"""The online store interface: raw counters per entity, applied exactly once per batch."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twotier.closing import Closing
from twotier.errors import TwotierError
from twotier.naming import online_collection

# FerretDB v1 (and portable MongoDB documents) forbid dots in field names and a
# leading "$"; the leading "_" is reserved for the store's own bookkeeping fields.
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_BATCH_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EXPERIMENTS_COLLECTION = "_experiments"
"""Per project, one document per experiment: ``{_id: <experiment>, shuffle, started_ts}``."""


class OnlineStoreError(TwotierError):
    """The online store rejected a request or is unreachable."""


@dataclass(frozen=True)
class OnlineStoreCapabilities:
    """What a backend can do, declared rather than hidden; the hot paths follow it.

    Attributes:
        transactions: Multi-document transactions are available.
        change_streams: Changes can be watched (``collection.watch()``).
        indexed_in: ``{"_id": {"$in": ids}}`` is an index lookup (not a collection scan),
            so an existence read or a large ``$in`` is cheap.
        bulk_upsert: One unordered bulk of compare-and-set updates with upsert reports a
            duplicate-key error per already-applied document and exact counts, so a
            batch is written in one command without reading first.
        union_reads: Reads of several collections can be answered by one query
            (``$unionWith``), so a serving request is one round trip.
        statements_per_command: Update statements one write command may carry.
    """

    transactions: bool
    change_streams: bool
    indexed_in: bool = True
    bulk_upsert: bool = True
    union_reads: bool = True
    statements_per_command: int = 10_000


@dataclass(frozen=True)
class Read:
    """One ``get_many`` of a multi-collection read (``OnlineStore.get_groups``).

    Attributes:
        collection: The collection to read.
        ids: Entity ids; unknown ids are absent from the answer.
        fields: Only these feature fields; all when None.
    """

    collection: str
    ids: Sequence[str]
    fields: Sequence[str] | None = None


@dataclass(frozen=True)
class ApplyResult:
    """What one ``apply_increments`` call did.

    Attributes:
        batch_id: The batch that was applied.
        documents: How many documents the batch touches.
        written: Documents updated or created by this call.
        skipped: Documents that had this batch (or a later one) already; unchanged.
    """

    batch_id: int
    documents: int
    written: int
    skipped: int


def check_field_name(name: str) -> str:
    """Return ``name`` if it can be a feature field name, else raise ``OnlineStoreError``."""
    if not _FIELD.match(name):
        raise OnlineStoreError(
            f"invalid online field name {name!r}: use a letter then letters, digits or '_' "
            "(at most 64; no dots or '$', which FerretDB and MongoDB reject)"
        )
    return name


def check_batch_key(batch_key: str) -> str:
    """Return ``batch_key`` if it can name a writer, else raise ``OnlineStoreError``."""
    if not _BATCH_KEY.match(batch_key):
        raise OnlineStoreError(
            f"invalid batch key {batch_key!r}: use 1-64 letters, digits, '_' or '-' "
            "(hash a path or query name first; dots are not allowed in field names)"
        )
    return batch_key


def check_increments(
    increments: Mapping[str, Mapping[str, float]],
    maxima: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Validate the ids and field names of an increments batch before any write.

    Raises:
        OnlineStoreError: An id is empty or not a string, a field name is invalid, or
            a field is both incremented and maximised in one document.
    """
    for entity_id, fields in [*increments.items(), *(maxima or {}).items()]:
        if not isinstance(entity_id, str) or not entity_id:
            raise OnlineStoreError(
                f"invalid entity id {entity_id!r}: online ids are non-empty strings "
                "(convert numeric ids with str())"
            )
        for name in fields:
            check_field_name(name)
    for entity_id, fields in (maxima or {}).items():
        both = sorted(set(fields) & set(increments.get(entity_id, {})))
        if both:
            raise OnlineStoreError(
                f"entity {entity_id!r}: field(s) {both} are both incremented and maximised "
                "in one batch; a field is either a counter ($inc) or a maximum ($max)"
            )


class OnlineStore(ABC, Closing):
    """Low-latency key-value features: one document per entity in a collection.

    Counters are stored raw and only ever incremented; rates are derived at read time.
    Writers apply micro-batches exactly once: every document remembers, per writer
    (``batch_key``), the last batch id applied to it, and a batch whose id is not
    newer changes nothing.
    """

    # -- lifecycle -----------------------------------------------------------

    @property
    @abstractmethod
    def capabilities(self) -> OnlineStoreCapabilities:
        """What this backend supports (transactions, change streams).

        Returns:
            The capabilities of the connected server.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the store must not be used afterwards."""

    # -- schema --------------------------------------------------------------

    @abstractmethod
    def ensure_indexes(self, collection: str, fields: Sequence[str] = ()) -> None:
        """Create the collection and secondary indexes on ``fields``; idempotent.

        The id lookup index always exists; ``fields`` are only needed for queries
        by feature value.

        Args:
            collection: The collection, e.g. ``naming.online_collection(project, group)``.
            fields: Feature fields to index in ascending order.

        Raises:
            OnlineStoreError: A field name is invalid or the server refused.
        """

    @abstractmethod
    def drop(self, collection: str) -> None:
        """Delete a collection and all its documents; a no-op when it does not exist.

        Args:
            collection: The collection to drop.
        """

    # -- writes --------------------------------------------------------------

    @abstractmethod
    def apply_increments(
        self,
        collection: str,
        batch_key: str,
        batch_id: int,
        increments: Mapping[str, Mapping[str, float]],
        maxima: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ApplyResult:
        """Add ``increments`` to the documents' counters, exactly once per batch.

        Each document is updated only if its last applied batch id for ``batch_key``
        is missing or lower than ``batch_id``; then its counters are incremented, its
        ``maxima`` fields raised, and the batch id recorded in the same single-document
        write. Replaying a batch, or an older one, changes nothing. Missing documents
        are created.

        Args:
            collection: The collection to write.
            batch_key: A stable id of the writer (e.g. of one streaming query), so
                independent writers of one document keep separate batch ids.
            batch_id: The writer's monotonically increasing batch number.
            increments: Per entity id, the amount to add to each counter field.
            maxima: Per entity id, values that replace a field only when larger than
                the stored one (``$max``; e.g. last-seen times in ms). A field may not
                be both incremented and maximised in one document. Ids may differ
                from those of ``increments``.

        Returns:
            How many documents were written and how many skipped as already applied.

        Raises:
            OnlineStoreError: An id, field name or batch key is invalid, or a write
                failed for another reason than being already applied.
        """

    # -- reads ---------------------------------------------------------------

    @abstractmethod
    def get_many(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, float]]:
        """Read the feature fields of many entities in one round trip.

        Args:
            collection: The collection to read.
            ids: Entity ids; unknown ids are simply absent from the result.
            fields: Only these feature fields (a projection: less to send and decode);
                all of them when None. Fields a document lacks are absent.

        Returns:
            Per known id, its feature fields (bookkeeping fields left out).

        Raises:
            OnlineStoreError: A field name is invalid or the server refused the query.
        """

    def get_groups(self, reads: Sequence[Read]) -> list[dict[str, dict[str, float]]]:
        """Several ``get_many`` reads, in one round trip where the backend can.

        A serving request reads its user's document and the items missing from its
        cache from different collections; backends that can union collections in one
        query (``capabilities.union_reads``) answer them together.

        Args:
            reads: The reads; an empty ``ids`` reads nothing.

        Returns:
            One answer per read, in order, shaped like ``get_many``'s.

        Raises:
            OnlineStoreError: A field name is invalid or the server refused the query.
        """
        return [self.get_many(r.collection, r.ids, r.fields) if r.ids else {} for r in reads]

    @abstractmethod
    def sum_fields(self, collection: str, fields: Sequence[str]) -> tuple[int, dict[str, float]]:
        """Totals of feature fields over a whole collection (for validation, not serving).

        Args:
            collection: The collection to scan.
            fields: The feature fields to add up; a document lacking one adds nothing.

        Returns:
            How many documents the collection holds, and per field its total.

        Raises:
            OnlineStoreError: A field name is invalid or the server refused the query.
        """

    # -- raw values and job state --------------------------------------------

    @abstractmethod
    def set_fields(self, collection: str, values: Mapping[str, Mapping[str, float]]) -> int:
        """Set feature fields to absolute values (``$set`` with upsert): an initial import.

        Unlike ``apply_increments`` this is idempotent by value: writing the same values
        twice leaves the same documents. Fields not named are left as they are, and so
        are the documents' batch ids, so a streaming writer can go on incrementing.

        Args:
            collection: The collection to write.
            values: Per entity id, the value of each field to set.

        Returns:
            How many documents were matched or created.

        Raises:
            OnlineStoreError: An id or field name is invalid, or the server refused.
        """

    @abstractmethod
    def put_document(self, collection: str, doc_id: str, document: Mapping[str, Any]) -> None:
        """Store a small bookkeeping document (job state, handoffs), replacing it whole.

        Args:
            collection: The collection, e.g. ``naming.online_collection(project, "jobs")``.
            doc_id: The document id.
            document: JSON-like values; keys without dots or a leading ``$``.

        Raises:
            OnlineStoreError: The server refused.
        """

    @abstractmethod
    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """A bookkeeping document stored by ``put_document``, without ``_id``; None if absent.

        Raises:
            OnlineStoreError: The server refused.
        """

    # -- experiment generations ----------------------------------------------

    def put_experiment_generation(
        self, project: str, experiment: str, shuffle: int, started_ts: int
    ) -> None:
        """Record that ``experiment`` of ``project`` now assigns with generation ``shuffle``.

        Serving reads it (``experiment_generation``) to switch cohorts without a restart.

        Args:
            project: The project.
            experiment: The experiment name.
            shuffle: The generation in force from ``started_ts`` on.
            started_ts: When it started (ms).

        Raises:
            OnlineStoreError: The server refused.
        """
        self.put_document(
            online_collection(project, EXPERIMENTS_COLLECTION),
            experiment,
            {"shuffle": int(shuffle), "started_ts": int(started_ts)},
        )

    def experiment_generation(self, project: str, experiment: str) -> int | None:
        """The generation recorded by ``put_experiment_generation``; None if never recorded.

        Raises:
            OnlineStoreError: The server refused.
        """
        doc = self.get_document(online_collection(project, EXPERIMENTS_COLLECTION), experiment)
        return None if doc is None else int(doc["shuffle"])
