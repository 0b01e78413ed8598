"""Online features: events into the online store exactly once, and a model's feature matrix out.

``OnlineFeatures`` is the serving-side API of the feature contract. ``write`` aggregates a
micro-batch of events per online feature group (``aggregate``) and applies it with the
batch-id compare-and-set of the online store; ``matrix`` reads one user and a list of
candidates and returns the model's input tensor in exactly the column order of its
``ModelFeatureSpec`` (derivations through ``derive.group_matrix``, the same code the
offline training sets use).

Example (against a running online store, e.g. ``twotier up``)::

    from twotier.config import load_settings
    from twotier.events import Event
    from twotier.features import OnlineFeatures

    with OnlineFeatures(load_settings()) as features:
        features.ensure_indexes("movielens")
        event = Event(event_id="e1", project="movielens", user_id="1", item_id="31",
                      action="view", value=4.0, ts=1_700_000_000_000)
        features.write("movielens", [event], batch_key="docs", batch_id=0)
        x = features.matrix("movielens", "ranker", user_id="1", candidates=["31", "99"])
        x.shape  # (2, 18): user_stats, item_stats and user_item columns, then request ones
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from twotier.closing import Closing
from twotier.config import Settings
from twotier.events import Event
from twotier.features.aggregate import entity_id
from twotier.features.derive import affinity_matrix, group_matrix, raw_arrays
from twotier.features.spec import FeatureGroup, ModelFeatureSpec
from twotier.items import CONTENT_GROUP
from twotier.naming import online_collection
from twotier.online_store import ApplyResult, OnlineStore, connect

RequestValue = float | Sequence[float]
"""A request feature's value: one for every row, or one per row."""

Doc = Mapping[str, Any] | None
"""One stored document's feature fields, or None for an entity the store never saw."""


def read_ids(group: FeatureGroup, user_id: str, candidates: Sequence[str]) -> list[str]:
    """The online ids one matrix request reads from ``group``.

    Args:
        group: The feature group.
        user_id: The requesting user.
        candidates: The candidate item ids, in row order.

    Returns:
        ``[user_id]`` for a user group (one row, broadcast to every candidate), the
        candidates for an item group, ``"<user_id>|<item_id>"`` per candidate for a
        user-item group.

    Example:
        >>> from twotier.features.builtin import builtin_projects
        >>> memes = builtin_projects()["memes"]
        >>> read_ids(memes.group("user_stats"), "7", ["a", "b"])
        ['7']
        >>> read_ids(memes.group("user_item"), "7", ["a", "b"])
        ['7|a', '7|b']
    """
    if group.entity == "user":
        return [user_id]
    return [entity_id(group.entity, user_id, c) for c in candidates]


def online_source(project: str, group: FeatureGroup) -> tuple[str, list[str]]:
    """Where a group is read online: its collection and the fields to fetch.

    A static group (item attributes) reads the attribute fields of the project's item data
    (the ``content`` collection); any other group its own collection's stored fields.

    Example:
        >>> from twotier.features.builtin import builtin_projects
        >>> online_source("movielens", builtin_projects()["movielens"].group("item_attrs"))
        ('movielens__content', ['genres', 'year'])
    """
    if group.static:
        return online_collection(project, CONTENT_GROUP), group.source_attributes()
    return online_collection(project, group.key), group.stored_fields()


def check_matrix_request(spec: ModelFeatureSpec, user_id: str, candidates: Sequence[str]) -> None:
    """Refuse a matrix request that no store read can answer: bad ids, offline-only groups.

    Args:
        spec: The model's feature spec.
        user_id: The requesting user.
        candidates: The candidate item ids.

    Raises:
        ValueError: An id is not a non-empty string, or the model reads a feature group
            that is not kept online.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"invalid user id {user_id!r}: ids are non-empty strings")
    bad = next((c for c in candidates if not isinstance(c, str) or not c), None)
    if bad is not None:
        raise ValueError(f"invalid candidate id {bad!r}: ids are non-empty strings (use str())")
    offline_only = [g.name for g in spec.groups if not g.online]
    if offline_only:
        raise ValueError(
            f"model {spec.model.name!r} reads offline-only feature group(s) {offline_only}; "
            "set `online: true` on them to serve this model"
        )


def assemble_matrix(
    spec: ModelFeatureSpec,
    group_docs: Sequence[Sequence[Doc]],
    n_rows: int,
    request: Mapping[str, RequestValue] | None = None,
    now_ms: float | None = None,
) -> np.ndarray:
    """A model's feature matrix from the stored documents of each of its groups.

    Pure: no store involved, so layout, broadcasting and defaults are testable alone.

    Args:
        spec: The model's feature spec (column order = ``spec.columns()``).
        group_docs: Per group of ``spec.groups`` (same order), the documents in row
            order: ``n_rows`` of them, or exactly one, which is broadcast to every row
            (user groups). None stands for an unknown entity and gets the defaults.
        n_rows: Number of rows (candidates).
        request: Request-feature values by name: one number for every row (e.g. the
            slot position), or one per row (e.g. tier one's score of each candidate);
            missing ones take their default.
        now_ms: Request time in ms for recency features; the current time when None.

    Returns:
        A float32 array of shape ``(n_rows, len(spec.columns()))``.

    Raises:
        ValueError: The number of document lists or of documents in one does not fit,
            ``request`` names a feature the model does not have, or a per-row value list
            does not have ``n_rows`` entries.

    Example:
        >>> from twotier.features.builtin import builtin_projects
        >>> spec = builtin_projects()["movielens"].model_spec("ranker")
        >>> user = [{"views": 4, "smiles": 2}]
        >>> items = [{"views": 10}, None]
        >>> pairs = [None, None]
        >>> genres = [{"views_by_genre__Drama": 3}]  # user_genres
        >>> attrs = [{"genres": ["Drama"], "year": "1995"}, None]  # item_attrs: item data
        >>> docs = [user, items, pairs, genres, attrs]
        >>> x = assemble_matrix(spec, docs, 2, {"tier1_rank": [0, 1]}, 0)
        >>> x.shape
        (2, 40)
        >>> x[:, 0].tolist()  # user_stats.views, broadcast
        [4.0, 4.0]
        >>> x[:, 6].tolist()  # item_stats.views; the unknown item gets the default 0
        [10.0, 0.0]
        >>> x[:, spec.columns().index("affinity.genre_view_share")].tolist()
        [1.0, 0.0]
        >>> x[:, -2].tolist()  # request.tier1_rank, one per candidate
        [0.0, 1.0]
    """
    if len(group_docs) != len(spec.groups):
        raise ValueError(
            f"model {spec.model.name!r} reads {len(spec.groups)} feature groups "
            f"{[g.name for g in spec.groups]}, got documents for {len(group_docs)}"
        )
    request = request or {}
    names = [r.name for r in spec.model.request_features]
    unknown = sorted(set(request) - set(names))
    if unknown:
        raise ValueError(
            f"model {spec.model.name!r} has no request feature(s) {unknown} "
            f"(its request features: {names})"
        )
    now = time.time() * 1000.0 if now_ms is None else float(now_ms)
    width = len(spec.columns())
    out = np.empty((n_rows, width), dtype=np.float32)
    col = 0
    raws = []
    for group, docs in zip(spec.groups, group_docs, strict=True):
        if len(docs) not in (1, n_rows):
            raise ValueError(
                f"feature group {group.name!r}: got {len(docs)} documents for {n_rows} rows "
                "(give one per row, or one to broadcast)"
            )
        raw = raw_arrays(group, docs)
        raws.append(raw)
        block = group_matrix(group, raw, now)
        out[:, col : col + block.shape[1]] = block
        col += block.shape[1]
    if spec.model.affinities:
        block = affinity_matrix(spec, raws, n_rows)
        out[:, col : col + block.shape[1]] = block
        col += block.shape[1]
    for r in spec.model.request_features:
        out[:, col] = request_column(r.name, request.get(r.name, r.default), n_rows)
        col += 1
    return out


def request_column(name: str, value: RequestValue, n_rows: int) -> np.ndarray | float:
    """One request feature's column: a scalar broadcast, or exactly ``n_rows`` values.

    Raises:
        ValueError: A list of the wrong length, or a value that is not a number.
    """
    if isinstance(value, int | float):
        return float(value)
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"request feature {name!r}: {value!r} is not a number or a list of numbers"
        ) from None
    if values.ndim != 1 or len(values) != n_rows:
        raise ValueError(
            f"request feature {name!r}: got {values.size} values for {n_rows} candidates "
            "(send one number for all of them, or exactly one per candidate)"
        )
    return values


class OnlineFeatures(Closing):
    """Writes events to and reads model feature matrices from the online store.

    Holds one online-store client (and, for models with several groups, a small thread
    pool that reads the groups concurrently); use it as a context manager or call
    ``close()``. Safe to share between threads.

    Args:
        settings: The platform settings (online store and projects).
        store: An already open store to use (and close) instead of
            ``online_store.connect(settings)``, e.g. one with pymongo event listeners.
        parallel_reads: Read the feature groups of a model concurrently (one round trip
            each, overlapped); False reads them one after the other.
    """

    def __init__(
        self,
        settings: Settings,
        store: OnlineStore | None = None,
        *,
        parallel_reads: bool = True,
    ) -> None:
        self._settings = settings
        self.store = store if store is not None else connect(settings)
        self._specs: dict[tuple[str, str], ModelFeatureSpec] = {}
        self._pool = ThreadPoolExecutor(4, "twotier-features") if parallel_reads else None

    def close(self) -> None:
        """Close the store client and the reader threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.store.close()

    # -- schema --------------------------------------------------------------

    def ensure_indexes(self, project: str) -> None:
        """Create the collections of every online feature group of ``project``; idempotent.

        Reads are by ``_id`` only, so no secondary index is needed.

        Raises:
            ConfigError: The project is not declared.
            OnlineStoreError: The store refused.
        """
        for group in self._settings.project_features(project).feature_groups:
            if group.from_events(online=True):
                self.store.ensure_indexes(online_collection(project, group.key))

    # -- writes --------------------------------------------------------------

    def write(
        self, project: str, events: Iterable[Event], batch_key: str, batch_id: int
    ) -> dict[str, ApplyResult]:
        """Apply a micro-batch of events to every online feature group, exactly once.

        Each group's updates (``aggregate``) go to its collection in one
        ``apply_increments`` call under ``(batch_key, batch_id)``; replaying the same
        batch changes nothing, and a crash midway is repaired by replaying it. A ``by``
        counter whose value the event's context lacks reads it from the item's data
        (``feature_jobs.enrich``), as the streaming job does.

        Args:
            project: The project; every event must belong to it.
            events: The batch (validated events).
            batch_key: A stable id of the writer, e.g. of one streaming query.
            batch_id: The writer's increasing batch number.

        Returns:
            Per online feature group name, what the store did.

        Raises:
            ValueError: An event belongs to another project.
            ConfigError: The project is not declared.
            OnlineStoreError: A write failed (safe to replay the batch).
            ItemLookupError: Item data could not be read (safe to replay the batch).
        """
        from twotier.feature_jobs.enrich import GroupPlan, ItemAttributes, lookup_items

        batch = list(events)
        for event in batch:
            if event.project != project:
                raise ValueError(
                    f"event {event.event_id!r} belongs to project {event.project!r}, not "
                    f"{project!r}: write each project's events separately"
                )
        groups = self._settings.project_features(project).feature_groups
        plans = [GroupPlan.of(g) for g in groups if g.from_events(online=True)]
        enriching = [p for p in plans if p.by_counters]
        items: ItemAttributes = {}
        wanted = [e.item_id for e in batch if any(p.needs_items(e) for p in enriching)]
        if wanted:
            attributes = set().union(*(p.attributes() for p in enriching))
            items = lookup_items(self._settings, project, wanted, attributes)
        results: dict[str, ApplyResult] = {}
        for plan in plans:
            group = plan.group
            updates = plan.updates(batch, items)
            results[group.name] = self.store.apply_increments(
                online_collection(project, group.key),
                batch_key,
                batch_id,
                updates.increments,
                updates.maxima,
            )
        return results

    # -- reads ---------------------------------------------------------------

    def spec(self, project: str, model: str) -> ModelFeatureSpec:
        """The feature spec of ``model`` in ``project``'s configuration (cached).

        Raises:
            ConfigError: The project is not declared.
            KeyError: The model is not declared in the project.
        """
        key = (project, model)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = self._settings.project_features(project).model_spec(model)
        return spec

    def matrix(
        self,
        project: str,
        model: str,
        user_id: str,
        candidates: Sequence[str],
        request: Mapping[str, RequestValue] | None = None,
        now_ms: float | None = None,
    ) -> np.ndarray:
        """The feature matrix of ``model`` for one user and its candidates.

        Args:
            project: The project.
            model: A model declared in the project's configuration.
            user_id: The requesting user.
            candidates: Candidate item ids, one row each, in this order.
            request: Request-time feature values; missing ones take their default.
            now_ms: Request time (ms since the epoch) for recency features; now if None.

        Returns:
            float32 array of shape ``(len(candidates), len(spec.columns()))``, columns in
            the model's order: each feature group's columns, then request features.

        Raises:
            ConfigError: The project is not declared.
            KeyError: The model is not declared in the project.
            ValueError: An id is not a non-empty string, a group is offline-only, or
                ``request`` names an unknown feature.
            OnlineStoreError: The store could not be read.
        """
        return self.matrix_for_spec(
            self.spec(project, model), project, user_id, candidates, request, now_ms
        )

    def matrix_for_spec(
        self,
        spec: ModelFeatureSpec,
        project: str,
        user_id: str,
        candidates: Sequence[str],
        request: Mapping[str, RequestValue] | None = None,
        now_ms: float | None = None,
    ) -> np.ndarray:
        """Like ``matrix``, for a spec loaded with a registered model.

        The groups are read as the spec declares them (name and version), so a model
        trained on ``item_stats`` v1 keeps reading v1 after the configuration moves on.
        Each group is one round trip, fetching only its stored fields.
        """
        check_matrix_request(spec, user_id, candidates)
        n = len(candidates)
        if n == 0:
            return np.empty((0, len(spec.columns())), dtype=np.float32)
        reads = [
            (*online_source(project, g), read_ids(g, user_id, candidates)) for g in spec.groups
        ]
        if self._pool is not None and len(reads) > 1:
            futures = [self._pool.submit(self._read, *r) for r in reads[1:]]
            first = self._read(*reads[0])
            group_docs = [first, *(f.result() for f in futures)]
        else:
            group_docs = [self._read(*r) for r in reads]
        return assemble_matrix(spec, group_docs, n, request, now_ms)

    def _read(self, collection: str, fields: list[str], ids: list[str]) -> list[Doc]:
        """One round trip: ``fields`` of ``ids`` in order, None where unknown."""
        found = self.store.get_many(collection, ids, fields)
        return [found.get(i) for i in ids]
