"""Offline features on a real embedded chdb: items, snapshots, point-in-time training sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.features import historical_features, training_set
from twotier.features.derive import group_matrix, raw_arrays
from twotier.features.offline import (
    OfflineFeaturesError,
    materialize_all_snapshots,
    materialize_snapshots,
)
from twotier.features.spec import (
    CounterFeature,
    FeatureGroup,
    LastSeenFeature,
    ProjectFeatures,
)
from twotier.offline_store import OfflineStore, OfflineStoreError, open_offline_store

PROJECT = "pit"
T0 = 1_700_000_000_000

FEATURES: dict[str, Any] = {
    "feature_groups": [
        {
            "name": "user_stats",
            "entity": "user",
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {"name": "smiles", "kind": "counter", "action": "smile"},
                {"name": "dislikes", "kind": "counter", "action": "dislike", "default": 7},
                {"name": "rating_sum", "kind": "counter", "action": "view", "agg": "sum"},
                {
                    "name": "smiles_by_type",
                    "kind": "counter",
                    "action": "smile",
                    "by": "content_type",
                    "values": ["image", "video"],
                },
                {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
                {
                    "name": "smile_rate",
                    "kind": "rate",
                    "numerator": "smiles",
                    "denominator": "views",
                    "prior_mean": 0.5,
                    "prior_weight": 2,
                },
                {"name": "since_last_view_s", "kind": "recency", "of": "last_view_ts"},
            ],
        },
        {
            "name": "item_stats",
            "entity": "item",
            "version": 2,
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {"name": "smiles", "kind": "counter", "action": "smile"},
                {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
            ],
        },
        {
            "name": "pair",
            "entity": "user_item",
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
            ],
        },
        {
            "name": "live_only",
            "entity": "user",
            "offline": False,
            "features": [{"name": "views", "kind": "counter", "action": "view"}],
        },
    ],
    "models": [
        {
            "name": "ranker",
            "feature_groups": ["user_stats", "item_stats", "pair"],
            "request_features": [{"name": "position", "default": 3}],
        },
        {"name": "live", "feature_groups": ["live_only"]},
    ],
}


def _event(
    n: int, user: str, item: str, action: str, t: int, value: float = 1.0, ctype: str = ""
) -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "project": PROJECT,
        "user_id": user,
        "item_id": item,
        "action": action,
        "value": value,
        "ts": T0 + t,
        "context": {"content_type": ctype} if ctype else {},
    }


# u1 views i1 three times (t=1000, 2000, 3000); same-time smiles; an unrelated share; a gif.
EVENTS = pd.DataFrame(
    [
        _event(1, "u1", "i1", "view", 1000, 4.0, "image"),
        _event(2, "u1", "i1", "smile", 1000, 1.0, "image"),
        _event(3, "u1", "i1", "view", 2000, 2.0, "image"),
        _event(4, "u2", "i1", "view", 2000, 5.0, "image"),
        _event(5, "u2", "i2", "smile", 2500, 1.0, "video"),
        _event(6, "u1", "i1", "view", 3000, 3.0, "image"),
        _event(7, "u1", "i2", "view", 3000, 1.5, "video"),
        _event(8, "u1", "i2", "smile", 3000, 1.0, "video"),
        _event(9, "u2", "i3", "share", 3500),
        _event(10, "u2", "i3", "smile", 4000, 1.0, "gif"),
        _event(11, "u2", "i1", "dislike", 4000),
        _event(12, "u2", "i2", "view", 5000, 2.0, "video"),
    ]
)


@pytest.fixture(scope="module")
def local(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("offline-features") / "offline"
    return settings.model_copy(
        update={
            "offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{data}"),
            "projects": {PROJECT: ProjectFeatures.model_validate(FEATURES)},
        }
    )


@pytest.fixture(scope="module")
def store(local: Settings) -> Iterator[OfflineStore]:
    with open_offline_store(local) as opened:
        opened.ensure_tables(PROJECT)
        assert opened.insert_events(PROJECT, EVENTS) == len(EVENTS)
        assert opened.insert_events(PROJECT, EVENTS.iloc[:4]) == 0  # idempotent by event_id
        materialize_all_snapshots(opened, local, PROJECT)
        yield opened


def _group(local: Settings, name: str) -> FeatureGroup:
    return local.project_features(PROJECT).group(name)


def _snapshots(store: OfflineStore, group: FeatureGroup, project: str = PROJECT) -> pd.DataFrame:
    table = store.table(project, group.key)
    frame = store.query_df(f"SELECT * FROM {table} FINAL ORDER BY entity_id, ts")
    return frame.astype({"entity_id": object}).reset_index(drop=True)


def _expected_snapshots(events: pd.DataFrame, group: FeatureGroup) -> pd.DataFrame:
    """The snapshot rows recomputed in pandas, one event at a time."""
    key = {
        "user": events["user_id"],
        "item": events["item_id"],
        "user_item": events["user_id"] + "|" + events["item_id"],
    }[group.entity]
    events = events.assign(entity_id=key)
    actions = {f.action for f in group.raw_features()}
    events = events[events["action"].isin(actions)]
    rows = []
    for (entity, t), _ in sorted(events.groupby(["entity_id", "ts"]), key=lambda kv: kv[0]):
        past = events[(events["entity_id"] == entity) & (events["ts"] <= t)]
        row: dict[str, Any] = {"entity_id": entity, "ts": t}
        for f in group.raw_features():
            fed = past[past["action"] == f.action]
            if isinstance(f, LastSeenFeature):
                row[f.name] = float(fed["ts"].max()) if len(fed) else f.default
                continue
            assert isinstance(f, CounterFeature)
            targets = [(f.name, fed)]
            if f.by:
                by = fed["context"].map(lambda c, by=f.by: c.get(by))
                targets = [(f"{f.name}__{v}", fed[by == v]) for v in f.values]
            for field, part in targets:
                amount = len(part) if f.agg == "count" else part["value"].sum()
                row[field] = float(amount) if len(part) else f.default
        rows.append(row)
    return pd.DataFrame(rows, columns=["entity_id", "ts", *group.stored_fields()])


# -- items -----------------------------------------------------------------------


def test_items_are_stored_once_and_replaced_when_changed(store: OfflineStore) -> None:
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", 3],
            "attributes": [{"genres": ["Comedy", "Drama"]}, {"content_type": "video"}, None],
        }
    )
    assert store.insert_items(PROJECT, items) == 3
    assert store.insert_items(PROJECT, items) == 0  # idempotent
    changed = pd.DataFrame({"item_id": ["i1"], "attributes": [{"genres": ["Comedy"]}]})
    assert store.insert_items(PROJECT, changed) == 1
    stored = store.read_items(PROJECT)
    assert stored["item_id"].tolist() == ["3", "i1", "i2"]
    assert stored["attributes"].tolist() == [
        {},
        {"genres": ["Comedy"]},
        {"content_type": ["video"]},
    ]
    assert store.read_items(PROJECT, ["i2", "nope"])["item_id"].tolist() == ["i2"]
    genres = store.query_df(
        f"SELECT attributes['genres'] AS g FROM {store.table(PROJECT, 'items')} FINAL "
        "WHERE item_id = 'i1'"
    )
    assert list(genres["g"].iloc[0]) == ["Comedy"]


def test_bad_items_are_rejected_with_the_column(store: OfflineStore) -> None:
    with pytest.raises(OfflineStoreError, match=r"lacks columns \['attributes'\]"):
        store.insert_items(PROJECT, pd.DataFrame({"item_id": ["x"]}))
    with pytest.raises(OfflineStoreError, match="attribute 'genres' is 3"):
        store.insert_items(PROJECT, pd.DataFrame({"item_id": ["x"], "attributes": [{"genres": 3}]}))


# -- snapshots ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["user_stats", "item_stats", "pair"])
def test_snapshots_equal_a_pandas_recomputation(
    store: OfflineStore, local: Settings, name: str
) -> None:
    group = _group(local, name)
    expected = _expected_snapshots(EVENTS, group)
    assert store.has_table(PROJECT, group.key)
    pd.testing.assert_frame_equal(_snapshots(store, group), expected, check_dtype=False)


def test_snapshot_rows_hold_values_including_their_own_time(
    store: OfflineStore, local: Settings
) -> None:
    snap = _snapshots(store, _group(local, "user_stats")).set_index(["entity_id", "ts"])
    at_3000 = snap.loc[("u1", T0 + 3000)]
    assert at_3000["views"] == 4  # i1 at 1000, 2000, 3000 and i2 at 3000
    assert at_3000["smiles"] == 2 and at_3000["smiles_by_type__video"] == 1
    assert at_3000["rating_sum"] == 4.0 + 2.0 + 3.0 + 1.5
    assert at_3000["last_view_ts"] == T0 + 3000
    assert at_3000["dislikes"] == 7  # never disliked: the declared default
    assert snap.loc[("u2", T0 + 4000)]["dislikes"] == 1
    assert ("u2", T0 + 3500) not in snap.index  # a share feeds no feature of the group


def test_rebuild_and_incremental_builds_are_idempotent(
    store: OfflineStore, local: Settings
) -> None:
    group = _group(local, "user_stats")
    before = _snapshots(store, group)
    assert materialize_snapshots(store, PROJECT, group) == len(before)
    pd.testing.assert_frame_equal(_snapshots(store, group), before)
    # u1 at 3000, u2 at 4000 and 5000 (u2's share at 3500 feeds nothing)
    assert materialize_snapshots(store, PROJECT, group, since_ts=T0 + 3000) == 3
    assert materialize_snapshots(store, PROJECT, group, since_ts=T0 + 3000) == 3
    pd.testing.assert_frame_equal(_snapshots(store, group), before)


def test_incremental_build_after_new_events_equals_a_full_rebuild(
    store: OfflineStore, local: Settings
) -> None:
    other = "pit_incremental"  # tables of its own in the same store (one chdb per process)
    group = _group(local, "user_stats")
    events = EVENTS.assign(project=other)
    late = events[events["ts"] >= T0 + 3000]
    store.ensure_tables(other)
    store.insert_events(other, events[events["ts"] < T0 + 3000])
    materialize_snapshots(store, other, group)
    store.insert_events(other, late)
    materialize_snapshots(store, other, group, since_ts=int(late["ts"].min()))
    incremental = _snapshots(store, group, other)
    materialize_snapshots(store, other, group)
    pd.testing.assert_frame_equal(_snapshots(store, group, other), incremental)
    pd.testing.assert_frame_equal(
        incremental, _expected_snapshots(EVENTS, group), check_dtype=False
    )


def test_snapshot_errors_name_the_fix(store: OfflineStore, local: Settings) -> None:
    with pytest.raises(OfflineFeaturesError, match="online only"):
        materialize_snapshots(store, PROJECT, _group(local, "live_only"))
    with pytest.raises(OfflineFeaturesError, match="no events table"):
        materialize_snapshots(store, "movielens", _group(local, "user_stats"))


# -- point in time ------------------------------------------------------------------


def test_rows_see_only_events_strictly_before_their_time(
    store: OfflineStore, local: Settings
) -> None:
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1"],
            "item_id": ["i1", "i1", "i1", "i1"],
            "ts": [T0 + 1000, T0 + 2000, T0 + 3000, T0 + 3001],
        }
    )
    out = historical_features(store, local, PROJECT, "ranker", rows)
    # At t=1000 nothing happened before; the row's own view (and smile) must not count.
    assert out["user_stats.views"].tolist() == [0, 1, 2, 4]
    assert out["user_stats.smiles"].tolist() == [0, 1, 1, 2]
    assert out["pair.views"].tolist() == [0, 1, 2, 3]
    assert out["item_stats.views"].tolist() == [0, 1, 3, 4]  # u2 viewed i1 at 2000
    assert out["user_stats.since_last_view_s"].tolist() == [1e9, 1.0, 1.0, 0.001]
    assert out["user_stats.smile_rate"].tolist() == pytest.approx(
        [0.5, (1 + 1) / (1 + 2), (1 + 1) / (2 + 2), (2 + 1) / (4 + 2)]
    )
    assert out["request.position"].tolist() == [3, 3, 3, 3]  # no column: the default


def test_unknown_entities_get_the_declared_defaults(store: OfflineStore, local: Settings) -> None:
    rows = pd.DataFrame({"user_id": ["ghost"], "item_id": ["nowhere"], "ts": [T0 + 9999]})
    out = historical_features(store, local, PROJECT, "ranker", rows)
    user = out.filter(like="user_stats.").iloc[0].to_dict()
    assert user == {
        "user_stats.views": 0.0,
        "user_stats.smiles": 0.0,
        "user_stats.dislikes": 7.0,
        "user_stats.rating_sum": 0.0,
        "user_stats.smiles_by_type__image": 0.0,
        "user_stats.smiles_by_type__video": 0.0,
        "user_stats.last_view_ts": 0.0,
        "user_stats.smile_rate": 0.5,
        "user_stats.since_last_view_s": 1e9,
    }
    assert out["item_stats.views"].iloc[0] == 0 and out["pair.last_view_ts"].iloc[0] == 0


def test_columns_follow_the_model_spec_and_keep_rows_in_order(
    store: OfflineStore, local: Settings
) -> None:
    spec = local.project_features(PROJECT).model_spec("ranker")
    rows = pd.DataFrame(
        {
            "user_id": ["u2", "u1", "u2"],
            "item_id": ["i2", "i2", "i1"],
            "ts": [T0 + 6000, T0 + 6000, T0 + 2000],
            "position": [1, 2, np.nan],
            "clicked": [1, 0, 1],
        },
        index=[10, 11, 12],
    )
    out = historical_features(store, local, PROJECT, "ranker", rows, label="clicked")
    assert out.columns.tolist() == ["user_id", "item_id", "ts", *spec.columns(), "clicked"]
    assert out.index.tolist() == [10, 11, 12]
    assert out["user_id"].tolist() == ["u2", "u1", "u2"]
    assert out["request.position"].tolist() == [1, 2, 3]  # NaN takes the default
    assert out["pair.views"].tolist() == [1, 1, 0]
    assert out["clicked"].tolist() == [1, 0, 1]
    assert all(out[c].dtype == np.float64 for c in spec.columns())
    # A stored spec (as a registered model carries) gives the same frame.
    pd.testing.assert_frame_equal(
        historical_features(store, local, PROJECT, spec, rows, label="clicked"), out
    )
    empty = historical_features(store, local, PROJECT, "ranker", rows.iloc[:0])
    assert empty.columns.tolist() == ["user_id", "item_id", "ts", *spec.columns()]
    assert len(empty) == 0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"]}), "lacks column 'ts'"),
        (
            pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [1.7e12]}),
            "column 'ts' has dtype float64",
        ),
        (
            pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": ["2024-01-01"]}),
            "column 'ts' has dtype",
        ),
        (
            pd.DataFrame({"user_id": [1.0], "item_id": ["i1"], "ts": [T0]}),
            "column 'user_id' .* holds 1.0",
        ),
        (
            pd.DataFrame({"user_id": ["u1"], "item_id": [None], "ts": [T0]}),
            "column 'item_id' has missing values",
        ),
        (
            pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [T0], "position": ["a"]}),
            "column 'position' .* must be numeric",
        ),
    ],
)
def test_bad_entity_frames_name_the_column(
    store: OfflineStore, local: Settings, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(OfflineFeaturesError, match=message):
        historical_features(store, local, PROJECT, "ranker", frame)


def test_models_and_snapshots_that_cannot_serve_offline_are_named(
    store: OfflineStore, local: Settings
) -> None:
    rows = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [T0]})
    with pytest.raises(OfflineFeaturesError, match="no model 'nope'"):
        historical_features(store, local, PROJECT, "nope", rows)
    with pytest.raises(OfflineFeaturesError, match="'live_only_v1' is online only"):
        historical_features(store, local, PROJECT, "live", rows)
    with pytest.raises(OfflineFeaturesError, match="label column 'y'"):
        historical_features(store, local, PROJECT, "ranker", rows, label="y")


def test_offline_and_online_share_one_derivation(store: OfflineStore, local: Settings) -> None:
    """A row's offline features equal group_matrix over raw documents written by hand."""
    now = T0 + 4500
    rows = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i2", "i2"], "ts": [now, now]})
    out = historical_features(store, local, PROJECT, "ranker", rows)
    group = _group(local, "user_stats")
    u1_doc = {
        "views": 4,
        "smiles": 2,
        "rating_sum": 10.5,
        "smiles_by_type__image": 1,
        "smiles_by_type__video": 1,
        "last_view_ts": T0 + 3000,
    }
    u2_doc = {"views": 1, "smiles": 2, "dislikes": 1, "rating_sum": 5.0}  # as stored online
    u2_doc |= {"smiles_by_type__video": 1, "last_view_ts": T0 + 2000}
    expected = group_matrix(group, raw_arrays(group, [u1_doc, u2_doc]), now_ms=now)
    offline = out[[f"user_stats.{c}" for c in group.columns()]].to_numpy()
    np.testing.assert_allclose(offline, expected)
    assert offline[0, group.columns().index("since_last_view_s")] == 1.5


def test_training_set_labels_views_and_hides_the_future(
    store: OfflineStore, local: Settings
) -> None:
    spec = local.project_features(PROJECT).model_spec("ranker")
    rows = training_set(store, local, PROJECT, "ranker", label_action="smile")
    assert rows.columns.tolist() == ["user_id", "item_id", "ts", *spec.columns(), "label"]
    keys = list(zip(rows["user_id"], rows["item_id"], rows["ts"] - T0, strict=True))
    assert keys == [
        ("u1", "i1", 1000),
        ("u1", "i1", 2000),
        ("u2", "i1", 2000),
        ("u1", "i1", 3000),
        ("u1", "i2", 3000),
        ("u2", "i2", 5000),
    ]
    # u1 smiled at i1 only at 1000, so later views of i1 are negatives; u2's smile on i2
    # at 2500 came before its view at 5000: a negative too.
    assert rows["label"].tolist() == [1, 0, 0, 0, 1, 0]
    assert rows["user_stats.views"].tolist() == [0, 1, 0, 2, 2, 1]
    assert rows["user_stats.smiles"].tolist() == [0, 1, 0, 1, 1, 2]  # the own smile: unseen
    split = training_set(store, local, PROJECT, "ranker", since_ts=T0 + 2000, until_ts=T0 + 3000)
    assert split["ts"].tolist() == [T0 + 2000, T0 + 2000]
    pd.testing.assert_frame_equal(split, rows.iloc[1:3].reset_index(drop=True))
