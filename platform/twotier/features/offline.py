"""Offline features: snapshot tables in the offline store and point-in-time training sets.

A **snapshot table** per offline feature group (``<project>__<group>_v<version>``) holds
one row per ``(entity_id, ts)`` at which the entity had an event feeding the group, with
the group's raw stored fields as they were *after* the events at ``ts`` (counters and
sums cumulative, last-seen times the latest so far). A field the entity has not fed yet
holds its declared default, as a missing field of an online document does. Snapshots
are computed inside ClickHouse from the events table with window functions.

A **training set** joins every group's snapshot to each row of an entity frame with
``ASOF LEFT JOIN ... ON entity AND snapshot.ts < row.ts``: a row sees the features as
they were strictly before its own timestamp, never its own event or a later one.
Derived features (rates, recency) then come from ``twotier.features.derive.group_matrix``
with each row's own time, exactly as the online read derives them at request time.

Example:
    >>> from twotier.config import load_settings  # doctest: +SKIP
    >>> from twotier.offline_store import open_offline_store
    >>> settings = load_settings()
    >>> with open_offline_store(settings) as store:
    ...     materialize_all_snapshots(store, settings, "movielens")
    ...     rows = training_set(store, settings, "movielens", "ranker", label_action="smile")
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.features.aggregate import PAIR_SEPARATOR
from twotier.features.derive import affinity_matrix, group_matrix, raw_defaults, static_arrays
from twotier.features.spec import (
    CounterFeature,
    Entity,
    FeatureGroup,
    LastSeenFeature,
    ModelFeatureSpec,
    value_field,
)
from twotier.naming import offline_table
from twotier.offline_store.base import OfflineStore

log = logging.getLogger(__name__)

ENTITY_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "ts")
"""The columns every entity frame needs: who, which item, and when (ms since the epoch)."""

SNAPSHOT_KEY: tuple[str, ...] = ("entity_id", "ts")
"""The key columns of a snapshot table, before the group's stored fields."""


class OfflineFeaturesError(TwotierError, ValueError):
    """A training set or snapshot cannot be built as asked; the message names the fix."""


# -- SQL building blocks ------------------------------------------------------------


def entity_sql(entity: Entity, prefix: str = "") -> str:
    """The SQL expression of an entity id over columns ``user_id`` and ``item_id``.

    Matches ``twotier.features.aggregate.entity_id``: the user id, the item id, or
    ``user_id || '|' || item_id`` for a user-item pair.
    """
    if entity == "user":
        return f"{prefix}user_id"
    if entity == "item":
        return f"{prefix}item_id"
    return f"concat({prefix}user_id, '{PAIR_SEPARATOR}', {prefix}item_id)"


def counter_amount_sql(feature: CounterFeature, bind: Callable[[Any, str], str]) -> str:
    """What one event adds to a counter, in SQL over ``value`` and ``ts``.

    ``1`` or ``value``, times ``feature.decay_weight(ts)`` for a decayed counter, as
    ``twotier.features.aggregate`` adds online; ``bind(value, type)`` binds a parameter.
    """
    amount = "toFloat64(1)" if feature.agg == "count" else "toFloat64(value)"
    if feature.half_life_days is None:
        return amount
    ref = bind(int(feature.reference_ts), "Int64")
    half_life = bind(float(feature.half_life_days) * 86_400_000.0, "Float64")
    return f"{amount} * exp2(toFloat64(ts - {ref}) / {half_life})"


def _quote(name: str) -> str:
    return f"`{name}`"


ITEM_ATTRIBUTES_COLUMN = "_item"
"""The joined item attributes (``Map(String, Array(String))``) in ``events_source``."""


def needs_items(group: FeatureGroup) -> bool:
    """True when the group has a ``by`` counter, which may read item attributes."""
    return any(isinstance(f, CounterFeature) and f.by for f in group.raw_features())


def by_condition_sql(by: str, value: str, bind: Callable[[Any, str], str], items: bool) -> str:
    """SQL that is true when an event's ``by`` value is (or includes) ``value``.

    As the online enrichment (``feature_jobs.enrich.by_values``): the event's
    ``context[by]`` when it has one, else the item's attribute ``by``, else its plural
    (``genre`` -> ``genres``), a list attribute matching each of its values. Without
    ``items`` (no item data joined) only the context counts.
    """
    key, wanted = bind(by, "String"), bind(value, "String")
    if not items:
        return f"context[{key}] = {wanted}"
    plural, item = bind(f"{by}s", "String"), ITEM_ATTRIBUTES_COLUMN
    return (
        f"if(mapContains(context, {key}), context[{key}] = {wanted}, "
        f"has(if(mapContains({item}, {key}), {item}[{key}], {item}[{plural}]), {wanted}))"
    )


def events_source(events_table: str, items_table: str | None, where: str) -> str:
    """``FROM`` clause of the events matching ``where``, with item attributes if asked.

    With ``items_table`` each event carries its item's attributes as ``_item`` (an
    empty map for an item without data).
    """
    if items_table is None:
        return f"{events_table} FINAL WHERE {where}"
    return (
        f"(SELECT * FROM {events_table} FINAL WHERE {where}) AS ev "
        f"LEFT JOIN (SELECT item_id, attributes AS {ITEM_ATTRIBUTES_COLUMN} "
        f"FROM {items_table} FINAL) AS it USING (item_id)"
    )


class _Params:
    """Server-side bound parameters ``{p<n>:Type}`` collected while building SQL."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, kind: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"


def snapshot_select(
    events_table: str,
    group: FeatureGroup,
    since_ts: int | None = None,
    items_table: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The query computing a group's snapshot rows from the events table.

    Args:
        events_table: The qualified events table (``OfflineStore.table(project, "events")``).
        group: The feature group.
        since_ts: Only rows with ``ts >= since_ts`` (their values still count every
            earlier event); None for all rows.
        items_table: The qualified items table, for ``by`` counters whose value comes
            from the item's attributes (``by_condition_sql``); None: the context only.

    Returns:
        The SQL and its bound parameters; the columns are ``SNAPSHOT_KEY`` then
        ``group.stored_fields()``.
    """
    params = _Params()
    per_ts: list[str] = []  # per (entity, ts): what the events at ts add
    running: list[str] = []  # window: cumulative up to and including ts
    final: list[str] = []  # the stored value, default while never fed
    actions: list[str] = []
    for f in group.raw_features():
        actions.append(f.action)
        is_action = f"action = {params.add(f.action, 'String')}"
        if isinstance(f, LastSeenFeature):
            parts = [(f.name, is_action)]
        elif f.by:
            by = f.by
            parts = [
                (
                    value_field(f.name, v),
                    f"{is_action} AND "
                    + by_condition_sql(by, v, params.add, items_table is not None),
                )
                for v in f.values
            ]
        else:
            parts = [(f.name, is_action)]
        default = params.add(float(f.default), "Float64")
        for field, condition in parts:
            n, add, cum = f"_n_{field}", f"_add_{field}", f"_cum_{field}"
            per_ts.append(f"countIf({condition}) AS {_quote(n)}")
            if isinstance(f, LastSeenFeature):
                per_ts.append(f"if({_quote(n)} > 0, ts, 0) AS {_quote(add)}")
                running.append(f"max({_quote(add)}) OVER w AS {_quote(cum)}")
            else:
                amount = counter_amount_sql(f, params.add) if isinstance(f, CounterFeature) else "1"
                per_ts.append(f"sumIf({amount}, {condition}) AS {_quote(add)}")
                running.append(f"sum({_quote(add)}) OVER w AS {_quote(cum)}")
            running.append(f"sum({_quote(n)}) OVER w AS {_quote('_ncum_' + field)}")
            final.append(
                f"if({_quote('_ncum_' + field)} > 0, toFloat64({_quote(cum)}), {default}) "
                f"AS {_quote(field)}"
            )
    entity = entity_sql(group.entity)
    where = [f"action IN {params.add(sorted(set(actions)), 'Array(String)')}"]
    outer = ""
    if since_ts is not None:
        since = params.add(int(since_ts), "Int64")
        # Only entities with new rows need recomputing; their history still counts.
        where.append(
            f"{entity} IN (SELECT DISTINCT {entity} FROM {events_table} FINAL "
            f"WHERE ts >= {since} AND {where[0]})"
        )
        outer = f"WHERE ts >= {since}"
    sql = f"""
        SELECT entity_id, ts, {", ".join(final)}
        FROM (
            SELECT entity_id, ts, {", ".join(running)}
            FROM (
                SELECT {entity} AS entity_id, ts, {", ".join(per_ts)}
                FROM {events_source(events_table, items_table, " AND ".join(where))}
                GROUP BY entity_id, ts
            )
            WINDOW w AS (
                PARTITION BY entity_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            )
        )
        {outer}
    """
    return sql, params.values


def snapshot_ddl(table: str, group: FeatureGroup) -> str:
    """``CREATE TABLE`` of a group's snapshot table (one Float64 column per stored field)."""
    fields = ",\n    ".join(f"{_quote(f)} Float64" for f in group.stored_fields())
    return f"""
CREATE TABLE IF NOT EXISTS {table}
(
    entity_id String,
    ts Int64 COMMENT 'ms; values include every event of the entity up to and including ts',
    {fields}
)
ENGINE = ReplacingMergeTree
ORDER BY (entity_id, ts)
COMMENT 'twotier feature snapshots of group {group.key}: cumulative raw values'
"""


# -- snapshots ----------------------------------------------------------------------


def _check_offline(group: FeatureGroup) -> None:
    if not group.offline:
        raise OfflineFeaturesError(
            f"feature group {group.key!r} is online only (offline: false): set offline: true "
            "in its declaration to build snapshots and training sets from it"
        )


def _snapshot_columns(store: OfflineStore, project: str, group: FeatureGroup) -> list[str] | None:
    """The columns of the group's snapshot table, or None if it does not exist."""
    if not store.has_table(project, group.key):
        return None
    described = store.query_df(f"DESCRIBE TABLE {store.table(project, group.key)}")
    return [str(c) for c in described["name"].tolist()]


def _check_snapshot_table(store: OfflineStore, project: str, group: FeatureGroup) -> None:
    columns = _snapshot_columns(store, project, group)
    table = offline_table(project, group.key)
    if columns is None:
        raise OfflineFeaturesError(
            f"no snapshot table {table!r} for feature group {group.key!r}: run "
            f"materialize_snapshots(store, {project!r}, group) (or materialize_all_snapshots) "
            "after loading events"
        )
    expected = [*SNAPSHOT_KEY, *group.stored_fields()]
    if columns != expected:
        raise OfflineFeaturesError(
            f"snapshot table {table!r} has columns {columns}, but group {group.key!r} now "
            f"stores {expected}: bump the group's version for a changed layout, or rebuild "
            "with materialize_snapshots(..., since_ts=None)"
        )


def materialize_snapshots(
    store: OfflineStore, project: str, group: FeatureGroup, since_ts: int | None = None
) -> int:
    """Build (or extend) a feature group's snapshot table from the project's events.

    With ``since_ts=None`` the table is rebuilt from all events into a new table that then
    replaces the old one atomically (``EXCHANGE TABLES``), so readers never see it half
    built. With ``since_ts``, the rows at ``ts >= since_ts`` are recomputed and written
    again (rows with an equal key replace each other; reads use ``FINAL``): pass a time no
    later than the earliest event loaded since the last build. Either way, building twice
    gives the same rows.

    Args:
        store: An open offline store whose events table holds the project's events.
        project: The project.
        group: An offline feature group of the project.
        since_ts: None for a full rebuild, else the first event time (ms) to recompute.

    Returns:
        How many snapshot rows were written.

    Raises:
        OfflineFeaturesError: The group is online only, the events table is missing, or
            (incremental) the existing table's columns differ from the group's.
        OfflineStoreError: The engine refused.
    """
    _check_offline(group)
    if group.static:
        raise OfflineFeaturesError(
            f"feature group {group.key!r} holds item attributes: it has no snapshots "
            "(training sets read the items table; load item data with the items_offline "
            "asset or store.insert_items)"
        )
    if not store.has_table(project, "events"):
        raise OfflineFeaturesError(
            f"project {project!r} has no events table in the offline store: call "
            "store.ensure_tables(project) and store.insert_events(project, frame) first"
        )
    events = store.table(project, "events")
    target = store.table(project, group.key)
    items = (
        store.table(project, "items")
        if needs_items(group) and store.has_table(project, "items")
        else None
    )
    if since_ts is not None and _snapshot_columns(store, project, group) is not None:
        _check_snapshot_table(store, project, group)
        sql, params = snapshot_select(events, group, since_ts, items)
        written = int(store.query_df(f"SELECT count() AS n FROM ({sql})", params)["n"].iloc[0])
        if written:
            store.command(f"INSERT INTO {target} {sql}", params)
        log.info("snapshots %s: %d rows at ts >= %d rewritten", target, written, since_ts)
        return written

    build = store.table(project, f"{group.key}__build_{uuid.uuid4().hex[:12]}")
    sql, params = snapshot_select(events, group, items_table=items)
    store.command(snapshot_ddl(build, group))
    try:
        store.command(f"INSERT INTO {build} {sql}", params)
        written = int(store.query_df(f"SELECT count() AS n FROM {build}")["n"].iloc[0])
        if store.has_table(project, group.key):
            store.command(f"EXCHANGE TABLES {build} AND {target}")
        else:
            store.command(f"RENAME TABLE {build} TO {target}")
    finally:
        store.command(f"DROP TABLE IF EXISTS {build}")
    log.info("snapshots %s: rebuilt with %d rows", target, written)
    return written


def materialize_all_snapshots(
    store: OfflineStore, settings: Settings, project: str, since_ts: int | None = None
) -> dict[str, int]:
    """``materialize_snapshots`` for every offline feature group of ``project``.

    Returns:
        Rows written per group key (``<name>_v<version>``).
    """
    groups = [
        g for g in settings.project_features(project).feature_groups if g.from_events(offline=True)
    ]
    return {g.key: materialize_snapshots(store, project, g, since_ts) for g in groups}


# -- point-in-time training sets ---------------------------------------------------


def _model_spec(
    settings: Settings, project: str, model: str | ModelFeatureSpec
) -> ModelFeatureSpec:
    if isinstance(model, ModelFeatureSpec):
        return model
    try:
        return settings.project_features(project).model_spec(model)
    except KeyError as exc:
        raise OfflineFeaturesError(f"project {project!r}: {exc.args[0]}") from None


def _id_column(entity_df: pd.DataFrame, column: str) -> list[str]:
    series = entity_df[column]
    if pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return [str(v) for v in series.tolist()]
    values = series.tolist()
    bad = [v for v in values if not isinstance(v, str) or not v]
    if bad:
        raise OfflineFeaturesError(
            f"entity_df column {column!r} (dtype {series.dtype}) holds {bad[0]!r}: ids must "
            "be non-empty strings (or integers), as in the events"
        )
    return values


def _ts_column(entity_df: pd.DataFrame) -> np.ndarray:
    series = entity_df["ts"]
    if not pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise OfflineFeaturesError(
            f"entity_df column 'ts' has dtype {series.dtype}: it must hold integer "
            "milliseconds since the epoch (for datetimes: "
            "df['ts'] = df['ts'].astype('datetime64[ms]').astype('int64'))"
        )
    ts = series.to_numpy(dtype=np.int64)
    if (ts <= 0).any():
        raise OfflineFeaturesError(
            f"entity_df column 'ts' holds {int(ts[ts <= 0][0])}: times must be positive "
            "milliseconds since the epoch"
        )
    return ts


def _request_column(entity_df: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in entity_df.columns:
        return np.full(len(entity_df), default, dtype=np.float64)
    series = entity_df[name]
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise OfflineFeaturesError(
            f"entity_df column {name!r} (a request feature) has dtype {series.dtype}: "
            "it must be numeric (missing values take the declared default)"
        )
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(values), default, values)


def _check_entity_df(entity_df: pd.DataFrame, label: str | None) -> None:
    if not isinstance(entity_df, pd.DataFrame):
        raise OfflineFeaturesError(
            f"entity_df is a {type(entity_df).__name__}: pass a pandas DataFrame with "
            f"columns {list(ENTITY_COLUMNS)}"
        )
    for column in ENTITY_COLUMNS:
        if column not in entity_df.columns:
            raise OfflineFeaturesError(
                f"entity_df lacks column {column!r}: it needs {list(ENTITY_COLUMNS)} "
                f"(ts in ms since the epoch); it has {list(entity_df.columns)}"
            )
        if entity_df[column].isna().any():
            raise OfflineFeaturesError(
                f"entity_df column {column!r} has missing values: every row needs a "
                "user, an item and a time"
            )
    if label is not None and label not in entity_df.columns:
        raise OfflineFeaturesError(
            f"entity_df lacks the label column {label!r}; it has {list(entity_df.columns)}"
        )


def _join_items(
    store: OfflineStore, project: str, group: FeatureGroup, rows: str, n: int
) -> dict[str, np.ndarray]:
    """A static group's fields for each row's item, from the items table (as now)."""
    attributes = group.source_attributes()
    if not store.has_table(project, "items"):
        return static_arrays(group, [None] * n)
    items = store.table(project, "items")
    selected = ", ".join(
        f"i.attributes[{{a{k}:String}}] AS {_quote(name)}" for k, name in enumerate(attributes)
    )
    joined = store.query_df(
        f"""
        SELECT e._row AS _row, i.item_id != '' AS _known, {selected}
        FROM {rows} AS e
        LEFT JOIN (
            SELECT item_id, attributes FROM {items} FINAL
            WHERE item_id IN (SELECT DISTINCT item_id FROM {rows})
        ) AS i
        ON e.item_id = i.item_id
        ORDER BY _row
        SETTINGS join_use_nulls = 0
        """,
        {f"a{k}": name for k, name in enumerate(attributes)},
    )
    if len(joined) != n:
        raise OfflineFeaturesError(
            f"item join of {group.key!r} returned {len(joined)} rows for {n}: "
            "the offline store lost rows; retry"
        )
    columns = {name: joined[name].tolist() for name in attributes}
    known = joined["_known"].tolist()
    docs = [
        {name: list(columns[name][k]) for name in attributes} if known[k] else None
        for k in range(n)
    ]
    return static_arrays(group, docs)


def _join_group(
    store: OfflineStore, project: str, group: FeatureGroup, rows: str, n: int
) -> dict[str, np.ndarray]:
    """The group's raw fields strictly before each row's time (defaults when none)."""
    if group.static:
        return _join_items(store, project, group, rows, n)
    fields = group.stored_fields()
    key = {"user": "user_id", "item": "item_id", "user_item": "pair_id"}[group.entity]
    snapshot = store.table(project, group.key)
    selected = ", ".join(f"s.{_quote(f)} AS {_quote(f)}" for f in fields)
    joined = store.query_df(
        f"""
        SELECT e._row AS _row, s.ts AS _snapshot_ts, {selected}
        FROM {rows} AS e
        ASOF LEFT JOIN (
            SELECT * FROM {snapshot} FINAL
            WHERE entity_id IN (SELECT DISTINCT {key} FROM {rows})
        ) AS s
        ON e.{key} = s.entity_id AND s.ts < e.ts
        ORDER BY _row
        SETTINGS join_use_nulls = 1
        """
    )
    if len(joined) != n:
        raise OfflineFeaturesError(
            f"point-in-time join of {group.key!r} returned {len(joined)} rows for {n}: "
            "the offline store lost rows; retry"
        )
    matched = joined["_snapshot_ts"].notna().to_numpy()
    defaults = raw_defaults(group)
    raw: dict[str, np.ndarray] = {}
    for field in fields:
        values = joined[field].to_numpy(dtype=np.float64, na_value=np.nan)
        raw[field] = np.where(matched, values, defaults[field])
    return raw


def historical_features(
    store: OfflineStore,
    settings: Settings,
    project: str,
    model: str | ModelFeatureSpec,
    entity_df: pd.DataFrame,
    label: str | None = None,
) -> pd.DataFrame:
    """The model's features for each row of ``entity_df``, as they were just before its time.

    Every feature group's snapshot is joined with ``ASOF LEFT JOIN`` on the row's entity
    and ``snapshot.ts < row.ts`` (strictly before: never the row's own event or a later
    one); an entity without earlier events gets the declared defaults. Derived features
    come from ``derive.group_matrix`` with each row's ``ts`` as the request time, and
    request features from ``entity_df`` columns of the same name (else their defaults).
    Snapshots must be materialized first (``materialize_snapshots``).

    Args:
        store: An open offline store.
        settings: The settings declaring the project's feature groups and models.
        project: The project.
        model: A model name of the project, or a stored ``ModelFeatureSpec``.
        entity_df: Columns ``user_id``, ``item_id`` (strings or integers) and ``ts``
            (integer ms since the epoch); optional request-feature columns and a label.
        label: A column of ``entity_df`` to carry into the result, last.

    Returns:
        A frame with ``entity_df``'s index and the columns ``user_id``, ``item_id``,
        ``ts``, then ``spec.columns()`` in order (float64), then ``label`` if given.

    Raises:
        OfflineFeaturesError: ``entity_df`` lacks a column or has a wrong type (the message
            names it), the model is unknown, a group is online only, or a snapshot table
            is missing or stale in layout.
        OfflineStoreError: The engine refused.

    Example:
        >>> rows = pd.DataFrame({"user_id": ["1"], "item_id": ["31"], "ts": [964982703000]})
        >>> historical_features(store, settings, "movielens", "ranker", rows)  # doctest: +SKIP
    """
    spec = _model_spec(settings, project, model)
    _check_entity_df(entity_df, label)
    user_ids = _id_column(entity_df, "user_id")
    item_ids = _id_column(entity_df, "item_id")
    ts = _ts_column(entity_df)
    for group in spec.groups:
        _check_offline(group)
        if not group.static:
            _check_snapshot_table(store, project, group)

    n = len(entity_df)
    blocks: list[np.ndarray] = []
    if n:
        rows = store.table(project, f"entity_rows_{uuid.uuid4().hex}")
        frame = pd.DataFrame(
            {
                "_row": np.arange(n, dtype=np.uint64),
                "user_id": user_ids,
                "item_id": item_ids,
                "pair_id": [
                    f"{u}{PAIR_SEPARATOR}{i}" for u, i in zip(user_ids, item_ids, strict=True)
                ],
                "ts": ts,
            }
        )
        store.command(
            f"CREATE TABLE {rows} (_row UInt64, user_id String, item_id String, "
            "pair_id String, ts Int64) ENGINE = Memory"
        )
        try:
            store.insert_frame(rows, frame)
            raws = []
            for group in spec.groups:
                raw = _join_group(store, project, group, rows, n)
                raws.append(raw)
                blocks.append(group_matrix(group, raw, now_ms=ts.astype(np.float64)))
            if spec.model.affinities:
                blocks.append(affinity_matrix(spec, raws, n))
        finally:
            store.command(f"DROP TABLE IF EXISTS {rows}")
    else:
        blocks = [np.zeros((0, len(g.columns()))) for g in spec.groups]
        blocks.append(np.zeros((0, len(spec.model.affinities))))
    blocks.extend(
        _request_column(entity_df, r.name, r.default)[:, None] for r in spec.model.request_features
    )
    matrix = np.hstack(blocks) if blocks else np.zeros((n, 0))
    out = pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "ts": ts}, index=entity_df.index)
    features = pd.DataFrame(matrix, columns=spec.columns(), index=entity_df.index)
    parts: list[pd.DataFrame | pd.Series] = [out, features]
    if label is not None:
        parts.append(entity_df[label])
    return pd.concat(parts, axis=1)


def training_set(
    store: OfflineStore,
    settings: Settings,
    project: str,
    model: str | ModelFeatureSpec,
    label_action: str = "smile",
    *,
    example_action: str = "view",
    since_ts: int | None = None,
    until_ts: int | None = None,
) -> pd.DataFrame:
    """A labelled, point-in-time correct training set from the project's events.

    Every ``example_action`` event (a view) is one row at the event's own time; its label
    is 1 if the same user did ``label_action`` on the same item at or after that time
    (anywhere in the events table), else 0. Features are ``historical_features`` of the
    row: strictly before the view, so neither the view nor its label leaks in.

    Args:
        store: An open offline store with materialized snapshots.
        settings: The settings declaring the project's feature groups and models.
        project: The project.
        model: A model name of the project, or a stored ``ModelFeatureSpec``.
        label_action: The action that makes a positive label, e.g. ``"smile"``.
        example_action: The action whose events are the rows, e.g. ``"view"``.
        since_ts: Only examples at ``ts >= since_ts`` (ms), e.g. for a time split.
        until_ts: Only examples at ``ts < until_ts`` (ms).

    Returns:
        ``user_id``, ``item_id``, ``ts``, ``spec.columns()``, then ``label`` (int 0/1),
        one row per example event, sorted by time then user, item and event id.

    Raises:
        OfflineFeaturesError: As ``historical_features``; or no events table.
        OfflineStoreError: The engine refused.
    """
    if not store.has_table(project, "events"):
        raise OfflineFeaturesError(
            f"project {project!r} has no events table in the offline store: load events first"
        )
    events = store.table(project, "events")
    params: dict[str, Any] = {"example": example_action, "label": label_action}
    where = ["action = {example:String}"]
    if since_ts is not None:
        where.append("ts >= {since:Int64}")
        params["since"] = int(since_ts)
    if until_ts is not None:
        where.append("ts < {until:Int64}")
        params["until"] = int(until_ts)
    examples = store.query_df(
        f"""
        SELECT v.user_id AS user_id, v.item_id AS item_id, v.ts AS ts,
               toInt64(l.last_ts >= v.ts) AS label
        FROM (
            SELECT event_id, user_id, item_id, ts FROM {events} FINAL
            WHERE {" AND ".join(where)}
        ) AS v
        LEFT JOIN (
            SELECT user_id, item_id, max(ts) AS last_ts FROM {events} FINAL
            WHERE action = {{label:String}}
            GROUP BY user_id, item_id
        ) AS l
        ON v.user_id = l.user_id AND v.item_id = l.item_id
        ORDER BY v.ts, v.user_id, v.item_id, v.event_id
        SETTINGS join_use_nulls = 0
        """,
        params,
    )
    types = {"user_id": object, "item_id": object, "ts": "int64", "label": "int64"}
    rows = historical_features(
        store, settings, project, model, examples.astype(types), label="label"
    )
    return rows.reset_index(drop=True)


__all__ = [
    "ENTITY_COLUMNS",
    "SNAPSHOT_KEY",
    "OfflineFeaturesError",
    "entity_sql",
    "historical_features",
    "materialize_all_snapshots",
    "materialize_snapshots",
    "snapshot_ddl",
    "snapshot_select",
    "training_set",
]
