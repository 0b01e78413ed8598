"""OnlineFeatures against a real FerretDB: events in exactly once, model matrices out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from online_servers import SERVERS, with_online_server
from pymongo import monitoring

from twotier.config import ClickHouseOfflineStoreConfig, MongoDBOnlineStoreConfig, Settings
from twotier.events import Event
from twotier.features import OnlineFeatures, historical_features
from twotier.features.builtin import GENRES
from twotier.features.offline import materialize_all_snapshots
from twotier.features.spec import ModelFeatureSpec
from twotier.items import Item, all_items, items_frame, load_items
from twotier.naming import online_collection
from twotier.offline_store import events_frame, open_offline_store
from twotier.online_store.mongodb import MongoDBOnlineStore

NOW = 1_700_000_100_000
T0 = 1_700_000_000_000


class _Finds(monitoring.CommandListener):
    """Records the ``find`` commands a client sends (collection, ids asked for)."""

    def __init__(self) -> None:
        self.finds: list[tuple[str, list[str]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            ids = event.command["filter"]["_id"]
            self.finds.append(
                (event.command["find"], ids["$in"] if isinstance(ids, dict) else [ids])
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
def finds() -> _Finds:
    return _Finds()


@pytest.fixture(params=SERVERS)
def features(
    request: pytest.FixtureRequest, settings: Settings, finds: _Finds
) -> Iterator[OnlineFeatures]:
    """OnlineFeatures on a database of its own, on each local server in turn."""
    request.getfixturevalue(request.param)
    database = f"t_{uuid.uuid4().hex[:10]}"
    own = with_online_server(settings, request.param).model_copy(
        update={"online_store": MongoDBOnlineStoreConfig(database=database)}
    )
    store = MongoDBOnlineStore.from_settings(own, event_listeners=[finds])
    with OnlineFeatures(own, store) as f:
        f.ensure_indexes("movielens")
        f.ensure_indexes("memes")
        load_items(own, "movielens", MOVIES)
        load_items(own, "memes", MEMES_ITEMS)
        yield f
        store._client.drop_database(database)


def _event(project: str, n: int, user: str, item: str, action: str, value: float = 1.0,
           **context: str) -> Event:  # fmt: skip
    return Event(
        event_id=f"{project}-{n}",
        project=project,
        user_id=user,
        item_id=item,
        action=action,
        value=value,
        ts=T0 + n * 1000,
        context=context,
    )


# Item data, as `twotier replay` loads it: Dangerous Minds (Drama), Se7en (Mystery|Thriller).
MOVIES = [
    Item(item_id="31", attributes={"title": "Dangerous Minds (1995)", "genres": ["Drama"],
                                   "year": "1995"}),
    Item(item_id="47", attributes={"title": "Seven (a.k.a. Se7en) (1995)",
                                   "genres": ["Mystery", "Thriller"], "year": "1995"}),
]  # fmt: skip
MEMES_ITEMS = [
    Item(item_id="m1", attributes={"content_type": "gif"}),
    Item(item_id="m2", attributes={"content_type": "video"}),
]

MOVIELENS_EVENTS = [
    _event("movielens", 1, "1", "31", "view", 4.0),
    _event("movielens", 2, "1", "31", "smile", 4.0),
    _event("movielens", 3, "1", "47", "view", 2.0),
    _event("movielens", 4, "1", "47", "dislike", 2.0),
    _event("movielens", 5, "2", "31", "view", 5.0),
    _event("movielens", 6, "2", "31", "smile", 5.0),
]


def _stats(views: int, smiles: int, dislikes: int, rating_sum: float, last: float) -> list[float]:
    """The user stats block of the movielens ranker, derived by hand (builtin.py priors)."""
    recency = (NOW - last) / 1000 if last else 1e9
    return [
        views,
        smiles,
        dislikes,
        (smiles + 0.3 * 5) / (views + 5),
        recency,
        (rating_sum + 3.5 * 5) / (views + 5),
    ]


def _decayed(view_times: list[int], half_life_days: float) -> float:
    """Views decayed to NOW: each counts 2 ** (-age / half-life)."""
    return sum(2.0 ** (-(NOW - t) / (half_life_days * 86_400_000)) for t in view_times)


def _item(views: list[int], smiles: int, dislikes: int, rating_sum: float) -> list[float]:
    """The item stats block: the user block's columns plus two decayed view counters."""
    block = _stats(len(views), smiles, dislikes, rating_sum, max(views, default=0))
    return [*block[:3], _decayed(views, 30), _decayed(views, 365), *block[3:]]


DEFAULT_REQUEST = [0.0, 200.0, 300.0]  # tier1_score, tier1_rank, popular_rank


def _attrs(genres: list[str], year: float) -> list[float]:
    """The item_attrs block: multi-hot genres in GENRES order, then the year."""
    return [*(1.0 if g in genres else 0.0 for g in GENRES), year]


def test_matrix_equals_the_hand_computed_features(features: OnlineFeatures) -> None:
    results = features.write("movielens", MOVIELENS_EVENTS, "test-writer", 0)
    assert {name: r.documents for name, r in results.items()} == {
        "user_stats": 2,
        "item_stats": 2,
        "user_item": 3,
        "user_genres": 2,  # per genre of the movie, looked up in its item data
    }

    x = features.matrix("movielens", "ranker", "1", ["31", "47", "999"], now_ms=NOW)
    user_1 = _stats(2, 1, 1, 6.0, T0 + 3000)
    # User 1 viewed a Drama and a Mystery-Thriller (3 genre views) and smiled on the Drama.
    expected = [
        user_1
        + _item([T0 + 1000, T0 + 5000], 2, 0, 9.0)
        + [1]
        + _attrs(["Drama"], 1995)
        + [1 / 3, 1.0]
        + DEFAULT_REQUEST,
        user_1
        + _item([T0 + 3000], 0, 1, 2.0)
        + [1]
        + _attrs(["Mystery", "Thriller"], 1995)
        + [2 / 3, 0.0]
        + DEFAULT_REQUEST,
        # An item neither seen nor in the catalogue: defaults.
        user_1 + _item([], 0, 0, 0.0) + [0] + _attrs([], 0) + [0.0, 0.0] + DEFAULT_REQUEST,
    ]
    assert x.dtype == np.float32
    assert x.shape == (3, 40)
    np.testing.assert_allclose(x, np.array(expected, dtype=np.float32), rtol=1e-6)

    unknown_user = features.matrix("movielens", "ranker", "nobody", ["31"], now_ms=NOW)
    np.testing.assert_allclose(
        unknown_user,
        np.array(
            [
                _stats(0, 0, 0, 0.0, 0)
                + _item([T0 + 1000, T0 + 5000], 2, 0, 9.0)
                + [0]
                + _attrs(["Drama"], 1995)
                + [0.0, 0.0]  # no genre counts yet: the affinities' default
                + DEFAULT_REQUEST
            ],
            dtype=np.float32,
        ),
        rtol=1e-6,
    )


def test_online_and_offline_values_agree_for_the_same_events(
    features: OnlineFeatures, tmp_path: Path
) -> None:
    """Decayed counters, stored-only sums, userxitem counters, per-genre counters resolved
    from item data, static item attributes and affinities: one definition, two stores."""
    features.write("movielens", MOVIELENS_EVENTS, "test-writer", 0)
    candidates = ["31", "47", "999"]
    request = {"tier1_score": [0.5, 0.25, 0.0], "tier1_rank": [0.0, 1.0, 200.0]}
    online = features.matrix("movielens", "ranker", "1", candidates, request, now_ms=NOW)
    local = features._settings.model_copy(
        update={"offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{tmp_path / 'off'}")}
    )
    with open_offline_store(local) as store:
        store.ensure_tables("movielens")
        store.insert_events("movielens", events_frame(MOVIELENS_EVENTS))
        # As the items_offline asset does: the item data serving reads, copied.
        copied = all_items(local, "movielens")
        assert [i.item_id for i in copied] == ["31", "47"]
        store.insert_items("movielens", items_frame(copied))
        materialize_all_snapshots(store, local, "movielens")
        rows = pd.DataFrame({"user_id": "1", "item_id": candidates, "ts": NOW, **request})
        offline = historical_features(store, local, "movielens", "ranker", rows)
        genre_counts = store.query_df(
            f"SELECT `views_by_genre__Thriller` AS t, `smiles_by_genre__Drama` AS d "
            f"FROM {store.table('movielens', 'user_genres_v1')} "
            "WHERE entity_id = '1' ORDER BY ts DESC LIMIT 1"
        )
    spec = features.spec("movielens", "ranker")
    np.testing.assert_allclose(offline[spec.columns()].to_numpy(), online, rtol=1e-6)
    # Not trivially equal: the new kinds hold values other than their defaults.
    cols = spec.columns()
    assert online[:, cols.index("item_attrs.genre__Thriller")].tolist() == [0, 1, 0]
    assert online[:, cols.index("item_attrs.year")].tolist() == [1995, 1995, 0]
    np.testing.assert_allclose(
        online[:, cols.index("affinity.genre_view_share")], [1 / 3, 2 / 3, 0]
    )
    assert genre_counts.iloc[0].tolist() == [1.0, 1.0]


def test_a_replayed_batch_changes_nothing(features: OnlineFeatures) -> None:
    features.write("movielens", MOVIELENS_EVENTS, "test-writer", 7)
    before = features.matrix("movielens", "ranker", "1", ["31", "47"], now_ms=NOW)
    replay = features.write("movielens", MOVIELENS_EVENTS, "test-writer", 7)
    assert all(r.written == 0 and r.skipped == r.documents for r in replay.values())
    np.testing.assert_array_equal(
        features.matrix("movielens", "ranker", "1", ["31", "47"], now_ms=NOW), before
    )
    # The next batch counts again, and an older last-seen time never moves it back.
    late = [_event("movielens", 0, "1", "31", "view", 1.0)]
    features.write("movielens", late, "test-writer", 8)
    after = features.matrix("movielens", "ranker", "1", ["31"], now_ms=NOW)
    cols = features.spec("movielens", "ranker").columns()
    assert after[0, cols.index("item_stats.views")] == before[0, cols.index("item_stats.views")] + 1
    # Recency still counts from the latest view (t=5000), not from the late one.
    assert after[0, cols.index("item_stats.since_last_view_s")] == np.float32(
        (NOW - T0 - 5000) / 1000
    )


def test_memes_request_features_last_by_values_and_pairs(features: OnlineFeatures) -> None:
    events = [
        _event("memes", 1, "u1", "m1", "view", content_type="gif"),
        _event("memes", 2, "u1", "m1", "smile", content_type="gif"),
        _event("memes", 3, "u1", "m2", "smile", content_type="video"),
        _event("memes", 4, "u2", "m2", "share", content_type="video"),
    ]
    features.write("memes", events, "test-writer", 0)
    spec = features.spec("memes", "ranker")
    cols = spec.columns()
    x = features.matrix("memes", "ranker", "u1", ["m1", "m2", "m3"], {"position": 3}, NOW)
    assert x.shape == (3, len(cols))
    assert cols[-1] == "request.position"
    np.testing.assert_array_equal(x[:, -1], [3, 3, 3])
    np.testing.assert_array_equal(x[:, cols.index("user_stats.smiles_by_type__gif")], [1, 1, 1])
    np.testing.assert_array_equal(x[:, cols.index("user_stats.smiles_by_type__video")], [1, 1, 1])
    np.testing.assert_array_equal(x[:, cols.index("user_stats.smiles_by_type__image")], [0, 0, 0])
    np.testing.assert_array_equal(x[:, cols.index("item_stats.shares")], [0, 1, 0])
    np.testing.assert_array_equal(x[:, cols.index("user_item.views")], [1, 0, 0])
    default = features.matrix("memes", "ranker", "u1", ["m1"], now_ms=NOW)
    assert default[0, -1] == 0.0  # missing request feature: its default


def test_one_round_trip_per_group_with_only_the_needed_ids(
    features: OnlineFeatures, finds: _Finds
) -> None:
    features.write("memes", [_event("memes", 1, "u1", "m1", "view")], "test-writer", 0)
    candidates = [f"m{i}" for i in range(500)]
    finds.finds.clear()
    features.matrix("memes", "ranker", "u1", candidates, now_ms=NOW)
    by_collection = {name: ids for name, ids in finds.finds}
    assert len(finds.finds) == 4 == len(by_collection)
    assert by_collection[online_collection("memes", "content")] == candidates  # item_attrs
    assert by_collection[online_collection("memes", "user_stats_v1")] == ["u1"]
    assert by_collection[online_collection("memes", "item_stats_v1")] == candidates
    assert by_collection[online_collection("memes", "user_item_v1")] == [
        f"u1|{c}" for c in candidates
    ]


def test_sequential_reads_give_the_same_matrix(
    settings: Settings, features: OnlineFeatures
) -> None:
    features.write("movielens", MOVIELENS_EVENTS, "test-writer", 0)
    parallel = features.matrix("movielens", "ranker", "1", ["31", "47"], now_ms=NOW)
    own = features._settings
    with OnlineFeatures(own, parallel_reads=False) as sequential:
        np.testing.assert_array_equal(
            sequential.matrix("movielens", "ranker", "1", ["31", "47"], now_ms=NOW), parallel
        )


def test_matrix_for_a_spec_stored_with_a_model(features: OnlineFeatures) -> None:
    features.write("movielens", MOVIELENS_EVENTS, "test-writer", 0)
    stored = ModelFeatureSpec.from_json(features.spec("movielens", "ranker").to_json())
    np.testing.assert_array_equal(
        features.matrix_for_spec(stored, "movielens", "1", ["31"], now_ms=NOW),
        features.matrix("movielens", "ranker", "1", ["31"], now_ms=NOW),
    )
    empty = features.matrix("movielens", "ranker", "1", [], now_ms=NOW)
    assert empty.shape == (0, 40)


@pytest.mark.parametrize(
    ("user", "candidates", "match"),
    [
        ("", ["31"], "invalid user id"),
        ("1", ["31", 47], "invalid candidate id 47"),
        ("1", ["31", ""], "invalid candidate id ''"),
    ],
)
def test_bad_ids_are_named(
    features: OnlineFeatures, user: str, candidates: list[Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        features.matrix("movielens", "ranker", user, candidates)


def test_events_of_another_project_are_rejected_before_any_write(
    features: OnlineFeatures,
) -> None:
    mixed = [*MOVIELENS_EVENTS, _event("memes", 9, "u1", "m1", "view")]
    with pytest.raises(ValueError, match="'memes-9' belongs to project 'memes'"):
        features.write("movielens", mixed, "test-writer", 0)
    x = features.matrix("movielens", "ranker", "1", ["31"], now_ms=NOW)
    assert x[0, 0] == 0  # nothing was written


def test_unknown_model_is_named(features: OnlineFeatures) -> None:
    with pytest.raises(KeyError, match="no model 'rankr'"):
        features.matrix("movielens", "rankr", "1", ["31"])
