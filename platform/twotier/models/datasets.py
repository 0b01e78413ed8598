"""Training sets stored in the offline store, one table per tier (and per A/B split), by partition.

A training set is written one time partition at a time (``ALTER TABLE ... DROP PARTITION``
then ``INSERT``), so re-materialising or backfilling a partition replaces exactly its rows,
and a model reads whatever partitions exist. Tables:

* ``<project>__training_tier1``: ``partition, user_id, item_id, ts`` (the views tier one
  learns from).
* ``<project>__training_tier2_<model>``: ``partition, user_id, item_id, ts, label,
  features Array(Float64), layout``: point-in-time rows of ``features.training_set``; the
  features follow ``spec.columns()`` and ``layout`` (``spec_layout``) names that order,
  so rows built for another layout are never mixed in.
* ``<project>__training_tier2_<model>_groups``: the same rows with ``experiment``,
  ``shuffle`` and ``group``: the A/B group each user was in when the row happened.

Example:
    >>> labels = partition_labels(np.array([5, 15]), [("a", 0, 10), ("b", 10, 20)])
    >>> labels.tolist()
    ['a', 'b']
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from twotier.errors import TwotierError
from twotier.features.spec import ModelFeatureSpec
from twotier.offline_store.base import OfflineStore

TIER_ONE_TABLE = "training_tier1"

PARTITIONS_PER_INSERT = 50
"""ClickHouse refuses one INSERT block spanning more than 100 partitions by default."""

Window = tuple[str, int, int]
"""A partition: its key and its ``[start, end)`` in ms since the epoch."""


class TrainingSetError(TwotierError, ValueError):
    """A training set cannot be stored or read as asked; the message names the fix."""


def tier_two_table(model: str) -> str:
    """The table name (without project) of a tier-two model's training set."""
    return f"training_tier2_{model}"


def group_table(model: str) -> str:
    """The table name (without project) of a tier-two model's rows split by A/B group."""
    return f"{tier_two_table(model)}_groups"


def spec_layout(spec: ModelFeatureSpec) -> str:
    """A short fingerprint of the spec's column order and group versions."""
    text = "|".join([*(g.key for g in spec.groups), *spec.columns()])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def partition_labels(ts: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """The key of the window each time falls in (windows sorted and contiguous).

    Raises:
        TrainingSetError: A time lies outside every window.
    """
    times = np.asarray(ts, dtype=np.int64)
    if not windows:
        raise TrainingSetError("no partition windows given: pass at least one (key, start, end)")
    starts = np.array([w[1] for w in windows], dtype=np.int64)
    ends = np.array([w[2] for w in windows], dtype=np.int64)
    index = np.searchsorted(starts, times, side="right") - 1
    outside = (index < 0) | (times >= ends[np.clip(index, 0, None)])
    if outside.any():
        bad = int(times[outside][0])
        raise TrainingSetError(
            f"ts={bad} lies outside the partitions {windows[0][0]}..{windows[-1][0]}: "
            "select rows inside the partitions' time range"
        )
    keys = np.array([w[0] for w in windows], dtype=object)
    return keys[index]


def holdout_cutoff(ts: np.ndarray | pd.Series, test_fraction: float) -> int:
    """The time (ms) after which the last ``test_fraction`` of rows lie (lower quantile).

    Raises:
        TrainingSetError: No rows, ``test_fraction`` outside (0, 1), or every row has the
            same time (nothing would train or nothing would be held out).
    """
    if not 0 < test_fraction < 1:
        raise TrainingSetError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    times = np.asarray(ts, dtype=np.int64)
    if times.size == 0:
        raise TrainingSetError(
            "the training set is empty: materialise its partitions (a backfill) first"
        )
    cutoff = int(np.quantile(times, 1 - test_fraction, method="lower"))
    if not (times < cutoff).any():
        raise TrainingSetError(
            f"every row is at or after ts={cutoff}: materialise more partitions so that "
            "some rows train and later ones are held out"
        )
    return cutoff


# -- writing -------------------------------------------------------------------------

_TIER_ONE_COLUMNS = "user_id String, item_id String, ts Int64"
_TIER_TWO_COLUMNS = (
    "user_id String, item_id String, ts Int64, label UInt8, features Array(Float64), layout String"
)
_GROUP_COLUMNS = f"experiment String, shuffle UInt32, ab_group String, {_TIER_TWO_COLUMNS}"


def _ensure(store: OfflineStore, project: str, name: str, columns: str) -> str:
    table = store.table(project, name)
    store.ensure_tables(project)
    store.command(
        f"CREATE TABLE IF NOT EXISTS {table} (partition String, {columns}) "
        "ENGINE = MergeTree PARTITION BY partition ORDER BY (partition, ts)"
    )
    return table


def replace_partitions(
    store: OfflineStore,
    project: str,
    name: str,
    columns: str,
    frame: pd.DataFrame,
    keys: Sequence[str],
) -> dict[str, int]:
    """Replace partitions ``keys`` of table ``name`` with ``frame``'s rows (``partition`` column).

    Returns:
        Rows written per key (0 for a key without rows: its old rows are dropped all the same).

    Raises:
        TrainingSetError: A row's partition is not among ``keys``.
    """
    table = _ensure(store, project, name, columns)
    stray = sorted(set(frame["partition"].unique()) - set(keys)) if len(frame) else []
    if stray:
        raise TrainingSetError(
            f"rows for {table} carry partitions {stray[:3]} outside the ones being replaced "
            f"({keys[0]}..{keys[-1]}): label rows with partition_labels over those windows"
        )
    present = store.query_df(
        f"SELECT DISTINCT partition FROM {table} WHERE partition IN {{keys:Array(String)}}",
        {"keys": list(keys)},
    )
    for key in [] if present.empty else present["partition"].tolist():
        store.command(f"ALTER TABLE {table} DROP PARTITION {{p:String}}", {"p": str(key)})
    written = sorted(frame["partition"].unique()) if len(frame) else []
    for start in range(0, len(written), PARTITIONS_PER_INSERT):
        chunk = written[start : start + PARTITIONS_PER_INSERT]
        store.insert_frame(table, frame[frame["partition"].isin(chunk)])
    counts = frame["partition"].value_counts() if len(frame) else pd.Series(dtype="int64")
    return {key: int(counts.get(key, 0)) for key in keys}


def write_tier_one_set(
    store: OfflineStore, project: str, views: pd.DataFrame, windows: Sequence[Window]
) -> dict[str, int]:
    """Store tier one's views (``user_id, item_id, ts``) into the partitions of ``windows``."""
    frame = pd.DataFrame(
        {
            "partition": partition_labels(views["ts"].to_numpy(), windows) if len(views) else [],
            "user_id": views["user_id"].astype(str).to_numpy(),
            "item_id": views["item_id"].astype(str).to_numpy(),
            "ts": views["ts"].astype("int64").to_numpy(),
        }
    )
    return replace_partitions(
        store, project, TIER_ONE_TABLE, _TIER_ONE_COLUMNS, frame, [w[0] for w in windows]
    )


def _tier_two_frame(
    rows: pd.DataFrame, spec: ModelFeatureSpec, windows: Sequence[Window]
) -> pd.DataFrame:
    columns = spec.columns()
    missing = [c for c in ["user_id", "item_id", "ts", "label", *columns] if c not in rows.columns]
    if missing:
        raise TrainingSetError(
            f"training rows lack columns {missing[:5]}: build them with "
            f"twotier.features.training_set for model {spec.model.name!r}"
        )
    matrix = rows[columns].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "partition": partition_labels(rows["ts"].to_numpy(), windows) if len(rows) else [],
            "user_id": rows["user_id"].astype(str).to_numpy(),
            "item_id": rows["item_id"].astype(str).to_numpy(),
            "ts": rows["ts"].astype("int64").to_numpy(),
            "label": rows["label"].astype("uint8").to_numpy(),
            "features": list(matrix),
            "layout": spec_layout(spec),
        }
    )


def write_tier_two_set(
    store: OfflineStore,
    project: str,
    spec: ModelFeatureSpec,
    rows: pd.DataFrame,
    windows: Sequence[Window],
) -> dict[str, int]:
    """Store ``training_set`` rows of a tier-two model into the partitions of ``windows``."""
    frame = _tier_two_frame(rows, spec, windows)
    return replace_partitions(
        store,
        project,
        tier_two_table(spec.model.name),
        _TIER_TWO_COLUMNS,
        frame,
        [w[0] for w in windows],
    )


def write_group_sets(
    store: OfflineStore,
    project: str,
    spec: ModelFeatureSpec,
    rows: pd.DataFrame,
    windows: Sequence[Window],
) -> dict[str, int]:
    """Store tier-two rows with ``experiment``, ``shuffle`` and ``group`` columns (A/B split)."""
    missing = [c for c in ("experiment", "shuffle", "group") if c not in rows.columns]
    if missing:
        raise TrainingSetError(f"group rows lack columns {missing}: add them with groups_at")
    frame = _tier_two_frame(rows, spec, windows)
    frame.insert(1, "experiment", rows["experiment"].astype(str).to_numpy())
    frame.insert(2, "shuffle", rows["shuffle"].astype("uint32").to_numpy())
    frame.insert(3, "ab_group", rows["group"].astype(str).to_numpy())
    return replace_partitions(
        store, project, group_table(spec.model.name), _GROUP_COLUMNS, frame, [w[0] for w in windows]
    )


# -- reading -------------------------------------------------------------------------


def _where_partitions(keys: Sequence[str] | None, params: dict[str, object]) -> str:
    if keys is None:
        return "1"
    params["keys"] = list(keys)
    return "partition IN {keys:Array(String)}"


def read_tier_one_set(
    store: OfflineStore, project: str, keys: Sequence[str] | None = None
) -> pd.DataFrame:
    """Tier one's stored views (all partitions, or ``keys``), sorted by time.

    Raises:
        TrainingSetError: The table does not exist yet.
    """
    if not store.has_table(project, TIER_ONE_TABLE):
        raise TrainingSetError(
            f"project {project!r} has no tier-one training set: materialise "
            f"{project}/training_set_tier1 (its partitions) first"
        )
    params: dict[str, object] = {}
    frame = store.query_df(
        f"SELECT partition, user_id, item_id, ts FROM {store.table(project, TIER_ONE_TABLE)} "
        f"WHERE {_where_partitions(keys, params)} ORDER BY ts, user_id, item_id",
        params,
    )
    if frame.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object) for c in ("partition", "user_id", "item_id")}
        ).assign(ts=pd.Series(dtype="int64"))
    return frame.astype({"ts": "int64"})


def _expand(frame: pd.DataFrame, spec: ModelFeatureSpec, head: list[str]) -> pd.DataFrame:
    columns = spec.columns()
    if frame.empty:
        matrix = np.zeros((0, len(columns)))
    else:
        matrix = np.asarray(frame["features"].tolist(), dtype=np.float64).reshape(-1, len(columns))
    out = frame[head].reset_index(drop=True)
    features = pd.DataFrame(matrix, columns=columns)
    out = pd.concat([out, features], axis=1)
    out["label"] = (
        frame["label"].astype("int64").to_numpy() if len(frame) else np.zeros(0, np.int64)
    )
    return out.astype({"ts": "int64"})


def read_tier_two_set(
    store: OfflineStore, project: str, spec: ModelFeatureSpec, keys: Sequence[str] | None = None
) -> pd.DataFrame:
    """A tier-two model's stored rows of the spec's layout: ``partition, user_id, item_id,
    ts``, ``spec.columns()``, ``label``; sorted by time.

    Raises:
        TrainingSetError: The table does not exist yet.
    """
    name = tier_two_table(spec.model.name)
    if not store.has_table(project, name):
        raise TrainingSetError(
            f"project {project!r} has no training set for tier-two model {spec.model.name!r}: "
            f"materialise {project}/training_set_tier2_{spec.model.name} (its partitions) first"
        )
    params: dict[str, object] = {"layout": spec_layout(spec)}
    frame = store.query_df(
        "SELECT partition, user_id, item_id, ts, label, features "
        f"FROM {store.table(project, name)} "
        f"WHERE layout = {{layout:String}} AND {_where_partitions(keys, params)} "
        "ORDER BY ts, user_id, item_id",
        params,
    )
    return _expand(frame, spec, ["partition", "user_id", "item_id", "ts"])


def read_group_set(
    store: OfflineStore,
    project: str,
    spec: ModelFeatureSpec,
    experiment: str,
    group: str | None = None,
    keys: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The rows of ``experiment`` (one ``group`` or all) with ``shuffle`` and ``group`` columns.

    Raises:
        TrainingSetError: The table does not exist yet.
    """
    name = group_table(spec.model.name)
    if not store.has_table(project, name):
        raise TrainingSetError(
            f"project {project!r} has no A/B group training sets for {spec.model.name!r}: "
            f"materialise {project}/experiment_training_sets first"
        )
    params: dict[str, object] = {"layout": spec_layout(spec), "e": experiment}
    where = ["layout = {layout:String}", "experiment = {e:String}", _where_partitions(keys, params)]
    if group is not None:
        where.append("ab_group = {g:String}")
        params["g"] = group
    frame = store.query_df(
        "SELECT partition, experiment, shuffle, ab_group AS group_name, "
        "user_id, item_id, ts, label, features "
        f"FROM {store.table(project, name)} WHERE {' AND '.join(where)} "
        "ORDER BY ts, user_id, item_id",
        params,
    )
    out = _expand(
        frame,
        spec,
        ["partition", "experiment", "shuffle", "group_name", "user_id", "item_id", "ts"],
    ).rename(columns={"group_name": "group"})
    return out.astype({"shuffle": "int64"}) if len(out) else out


__all__ = [
    "TIER_ONE_TABLE",
    "TrainingSetError",
    "Window",
    "group_table",
    "holdout_cutoff",
    "partition_labels",
    "read_group_set",
    "read_tier_one_set",
    "read_tier_two_set",
    "replace_partitions",
    "spec_layout",
    "tier_two_table",
    "write_group_sets",
    "write_tier_one_set",
    "write_tier_two_set",
]
