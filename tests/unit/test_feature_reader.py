"""Tier two's online features: item documents cached per entity, one store call per request,
bounded staleness, negative entries, the LRU bound, outage defaults and the host's metrics.

The store is an in-memory ``OnlineStore`` that records every ``get_groups`` call; the
integration tests read the same way from the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from twotier.config import load_settings
from twotier.features.builtin import builtin_projects
from twotier.features.online import Doc, OnlineFeatures, assemble_matrix, check_matrix_request
from twotier.features.spec import ModelFeatures, ModelFeatureSpec
from twotier.naming import online_collection
from twotier.online_store import (
    ApplyResult,
    OnlineStore,
    OnlineStoreCapabilities,
    OnlineStoreError,
    Read,
)
from twotier.serve_apps import hosts
from twotier.serve_apps.entity_cache import EntityCache, namespace
from twotier.serve_apps.feature_reader import (
    MAX_STALENESS_S,
    FeatureRead,
    FeatureReader,
    seen_mask,
)

_ML = builtin_projects()["movielens"]
# The user and item groups of MovieLens alone (no user x item group, no request features).
MOVIELENS = ModelFeatureSpec(
    model=ModelFeatures(name="ranker", feature_groups=("user_stats", "item_stats")),
    groups=(_ML.group("user_stats"), _ML.group("item_stats")),
)
MEMES = builtin_projects()["memes"].model_spec("ranker")
NOW_MS = 1_700_000_000_000
PROJECT = "p"


class MemoryStore(OnlineStore):
    """Documents in dicts; records the reads of every ``get_groups`` call; can go down."""

    def __init__(self, docs: Mapping[str, Mapping[str, dict[str, Any]]]) -> None:
        self.docs = {collection: dict(by_id) for collection, by_id in docs.items()}
        self.calls: list[list[Read]] = []
        self.down = False
        self._lock = threading.Lock()

    @property
    def capabilities(self) -> OnlineStoreCapabilities:
        return OnlineStoreCapabilities(transactions=False, change_streams=False)

    def close(self) -> None:
        pass

    def get_many(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, float]]:
        if self.down:
            raise OnlineStoreError("online store unreachable: connection refused")
        stored = self.docs.get(collection, {})
        return {
            i: {k: v for k, v in stored[i].items() if fields is None or k in fields}
            for i in ids
            if i in stored
        }

    def get_groups(self, reads: Sequence[Read]) -> list[dict[str, dict[str, float]]]:
        with self._lock:
            self.calls.append(list(reads))
        return super().get_groups(reads)

    def ids_read(self, call: int = -1) -> dict[str, list[str]]:
        """Per collection, the ids one ``get_groups`` call asked for."""
        return {r.collection: list(r.ids) for r in self.calls[call]}

    # Not used by serving.
    def ensure_indexes(self, collection: str, fields: Sequence[str] = ()) -> None:
        raise NotImplementedError

    def drop(self, collection: str) -> None:
        raise NotImplementedError

    def apply_increments(
        self,
        collection: str,
        batch_key: str,
        batch_id: int,
        increments: Mapping[str, Mapping[str, float]],
        maxima: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ApplyResult:
        raise NotImplementedError

    def sum_fields(self, collection: str, fields: Sequence[str]) -> tuple[int, dict[str, float]]:
        raise NotImplementedError

    def set_fields(self, collection: str, values: Mapping[str, Mapping[str, float]]) -> int:
        raise NotImplementedError

    def put_document(self, collection: str, doc_id: str, document: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        raise NotImplementedError


USERS = online_collection(PROJECT, "user_stats_v1")
ITEMS = online_collection(PROJECT, "item_stats_v1")
PAIRS = online_collection(PROJECT, "user_item_v1")
CONTENT = online_collection(PROJECT, "content")  # item data: the memes' item_attrs group
DOCS: dict[str, dict[str, dict[str, Any]]] = {
    USERS: {"1": {"views": 10.0, "smiles": 4.0}, "2": {"views": 3.0, "dislikes": 1.0}},
    ITEMS: {
        "a": {"views": 7.0, "smiles": 2.0, "shares": 1.0, "last_view_ts": NOW_MS - 5000.0},
        "b": {"views": 1.0, "rating_sum": 4.0},
        "c": {"views": 30.0, "comments": 2.0},
        "d": {"views": 2.0},
    },
    PAIRS: {"1|a": {"views": 2.0, "last_view_ts": NOW_MS - 1000.0}},
    CONTENT: {"a": {"content_type": "gif"}, "b": {"content_type": "video"}},
}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(DOCS)


@pytest.fixture
def features(store: MemoryStore) -> Iterator[OnlineFeatures]:
    with OnlineFeatures(load_settings(), store, parallel_reads=False) as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _reader(features: OnlineFeatures, clock: Clock, **kwargs: Any) -> FeatureReader:
    options: dict[str, Any] = {"ttl_s": 2.0, "retry_s": 5.0, **kwargs}
    return FeatureReader(features, clock=clock, **options)


def _read(
    reader: FeatureReader,
    user: str,
    candidates: list[str],
    spec: ModelFeatureSpec = MOVIELENS,
    request: dict[str, float] | None = None,
) -> FeatureRead:
    return reader.matrix(spec, PROJECT, user, candidates, request, now_ms=NOW_MS)


# -- reads per request ---------------------------------------------------------------


def test_a_second_user_for_the_same_items_reads_only_its_user_document(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    first = _read(reader, "1", ["a", "b", "c"])
    assert store.ids_read() == {USERS: ["1"], ITEMS: ["a", "b", "c"]}
    assert (first.cache_hits, first.cache_misses, first.oldest_age_s) == (0, 3, None)
    clock.now += 0.5
    second = _read(reader, "2", ["c", "a", "b"])
    assert store.ids_read() == {USERS: ["2"]}  # the items came from the cache
    assert (second.cache_hits, second.cache_misses, second.oldest_age_s) == (3, 0, 0.5)
    assert sum(len(r.ids) for call in store.calls for r in call) == 1 + 3 + 1
    assert (reader.hits, reader.misses, reader.max_age_s) == (3, 3, 0.5)


def test_one_get_groups_call_per_request_and_user_item_documents_are_never_cached(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    for n in range(4):
        _read(reader, "1", ["a", "b"], MEMES, {"position": 1.0})
        assert len(store.calls) == n + 1
    assert store.ids_read(0) == {
        USERS: ["1"],
        ITEMS: ["a", "b"],
        PAIRS: ["1|a", "1|b"],
        CONTENT: ["a", "b"],
    }
    assert store.ids_read(-1) == {USERS: ["1"], PAIRS: ["1|a", "1|b"]}  # fresh per user
    repeated = _read(reader, "1", ["a", "a", "b"], MEMES)  # read once, two rows
    assert store.ids_read() == {USERS: ["1"], PAIRS: ["1|a", "1|b"]}
    # Two item groups (counters and item data), two distinct items each.
    assert repeated.cache_hits == 4 and repeated.matrix.shape[0] == 3
    assert len(reader.cache) == 4


@pytest.mark.parametrize("spec", [MOVIELENS, MEMES], ids=["movielens", "memes"])
def test_the_matrix_is_matrix_for_spec_cold_and_warm(
    features: OnlineFeatures, clock: Clock, spec: ModelFeatureSpec
) -> None:
    reader = _reader(features, clock)
    candidates = ["b", "zz", "a", "c", "a"]
    request = {"position": 3.0} if spec is MEMES else None
    expected = features.matrix_for_spec(spec, PROJECT, "1", candidates, request, NOW_MS)
    cold = _read(reader, "1", candidates, spec, request)
    warm = _read(reader, "1", candidates, spec, request)
    item_groups = sum(g.entity == "item" for g in spec.groups)
    assert not cold.degraded and not warm.degraded and warm.cache_hits == 4 * item_groups
    np.testing.assert_array_equal(cold.matrix, expected)
    np.testing.assert_array_equal(warm.matrix, expected)
    groups: list[list[Doc]] = [[DOCS[USERS]["1"]], [DOCS[ITEMS].get(c) for c in candidates]]
    if spec is MEMES:
        groups.append([DOCS[PAIRS].get(f"1|{c}") for c in candidates])
        groups.append([DOCS[CONTENT].get(c) for c in candidates])
        gif = spec.columns().index("item_attrs.content_type__gif")
        assert warm.matrix[:, gif].tolist() == [0, 0, 1, 0, 1]  # b video, zz/c unknown
    np.testing.assert_array_equal(
        warm.matrix, assemble_matrix(spec, groups, len(candidates), request, NOW_MS)
    )


# -- staleness, negative entries, off, bound ----------------------------------------------


def test_entries_expire_after_the_ttl(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    _read(reader, "1", ["a", "b"])
    clock.now += 1.9
    assert _read(reader, "1", ["a", "b"]).oldest_age_s == pytest.approx(1.9)
    store.docs[ITEMS]["a"] = {"views": 99.0}
    clock.now += 0.1  # 2.0 s after the read: stale
    fresh = _read(reader, "2", ["a", "b"])
    assert store.ids_read() == {USERS: ["2"], ITEMS: ["a", "b"]}
    views = MOVIELENS.columns().index("item_stats.views")
    assert fresh.cache_misses == 2 and fresh.matrix[0, views] == 99.0


def test_unknown_items_are_cached_as_defaults(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    first = _read(reader, "1", ["new-item", "a"])
    assert store.ids_read()[ITEMS] == ["new-item", "a"]
    again = _read(reader, "2", ["new-item", "a"])
    assert ITEMS not in store.ids_read() and again.cache_hits == 2
    views = MOVIELENS.columns().index("item_stats.views")
    assert first.matrix[0, views] == again.matrix[0, views] == 0.0


def test_ttl_zero_turns_the_cache_off(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock, ttl_s=0.0)
    for _ in range(3):
        read = _read(reader, "1", ["a", "b"])
        assert store.ids_read() == {USERS: ["1"], ITEMS: ["a", "b"]}
        assert (read.cache_hits, read.cache_misses) == (0, 0)
    assert len(reader.cache) == 0


def test_ttl_above_a_minute_is_capped(features: OnlineFeatures, clock: Clock) -> None:
    assert _reader(features, clock, ttl_s=3600.0).cache.ttl_s == MAX_STALENESS_S


def test_the_cache_keeps_the_most_recently_used_entities(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock, max_entries=3)
    _read(reader, "1", ["a", "b", "c"])
    _read(reader, "1", ["a"])  # a is now the most recently used
    _read(reader, "1", ["d"])  # evicts b
    assert len(reader.cache) == 3
    assert _read(reader, "1", ["a", "c", "d"]).cache_hits == 3
    assert _read(reader, "1", ["b"]).cache_misses == 1


def test_clear_forgets_every_document(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    _read(reader, "1", ["a", "b"])
    reader.clear()
    assert len(reader.cache) == 0
    assert _read(reader, "1", ["a", "b"]).cache_misses == 2


def test_cached_documents_belong_to_the_fields_they_were_read_with() -> None:
    cache = EntityCache(ttl_s=2.0, clock=lambda: 0.0)
    narrow, wide = namespace(ITEMS, ["views"]), namespace(ITEMS, ["views", "smiles"])
    cache.store(narrow, ["a"], {"a": {"views": 1.0}}, read_at=0.0)
    assert cache.lookup(narrow, ["a"]).found == {"a": {"views": 1.0}}
    assert cache.lookup(wide, ["a"]).missing == ["a"]
    with pytest.raises(ValueError, match="max_entries"):
        EntityCache(ttl_s=1.0, max_entries=0)


def test_concurrent_requests_agree_with_a_single_thread(
    features: OnlineFeatures, clock: Clock
) -> None:
    reader = _reader(features, clock, max_entries=2)  # evictions race with lookups
    expected = _read(_reader(features, clock), "1", ["a", "b", "c", "d"]).matrix
    with ThreadPoolExecutor(8) as pool:
        reads = list(pool.map(lambda _: _read(reader, "1", ["a", "b", "c", "d"]), range(200)))
    for read in reads:
        np.testing.assert_array_equal(read.matrix, expected)
    assert reader.hits + reader.misses == 4 * 200


# -- bad requests and outages -----------------------------------------------------------


def test_bad_requests_raise_even_when_the_store_is_down(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    store.down = True
    with pytest.raises(ValueError, match="candidate id"):
        _read(reader, "1", ["a", ""])
    with pytest.raises(ValueError, match="user id"):
        _read(reader, "", ["a"])
    user_stats, item_stats = MOVIELENS.groups
    offline_items = item_stats.model_copy(update={"online": False})
    offline = MOVIELENS.model_copy(update={"groups": (user_stats, offline_items)})
    with pytest.raises(ValueError, match="offline-only"):
        check_matrix_request(offline, "1", ["a"])
    with pytest.raises(ValueError, match="offline-only"):
        _read(reader, "1", ["a"], offline)
    assert store.calls == []
    empty = _read(reader, "1", [])
    assert empty.matrix.shape == (0, len(MOVIELENS.columns())) and not empty.degraded


def test_an_outage_serves_flagged_defaults_and_spares_the_store(
    features: OnlineFeatures, store: MemoryStore, clock: Clock
) -> None:
    reader = _reader(features, clock)
    _read(reader, "1", ["a", "b"])  # items cached
    clock.now += 0.5
    store.down = True
    degraded = _read(reader, "1", ["a", "b"])
    expected = assemble_matrix(MOVIELENS, [[None], [None]], 2, None, NOW_MS)
    assert degraded.degraded and (degraded.cache_hits, degraded.cache_misses) == (0, 0)
    np.testing.assert_array_equal(degraded.matrix, expected)
    calls = len(store.calls)
    for _ in range(10):  # within retry_s the store is not asked again
        assert _read(reader, "2", ["x"]).degraded
    assert len(store.calls) == calls and reader.degraded == 11
    clock.now += 5.0
    store.down = False
    back = _read(reader, "2", ["x"])
    assert not back.degraded and len(store.calls) == calls + 1


# -- what the host exports ---------------------------------------------------------------


class _Metric:
    def __init__(self, name: str, **_: Any) -> None:
        self.name = name
        self.calls: list[float] = []

    def inc(self, value: float = 1.0) -> None:
        assert value > 0, "Ray refuses a counter increment <= 0"
        self.calls.append(value)

    def set(self, value: float) -> None:
        self.calls.append(value)

    def observe(self, value: float) -> None:
        self.calls.append(value)


class _Metrics:
    Counter = Gauge = Histogram = _Metric


def test_host_metrics_count_hits_misses_entries_and_staleness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hosts, "metrics", _Metrics)
    recorded = hosts.FeatureCacheMetrics()
    matrix = np.zeros((1, 1), dtype=np.float32)
    recorded.record(FeatureRead(matrix, cache_hits=3, cache_misses=2, oldest_age_s=0.4), 5)
    recorded.record(FeatureRead(matrix, degraded=True), 5)
    recorded.record(FeatureRead(matrix, cache_misses=4), 9)
    by_name = {m.name: m.calls for m in vars(recorded).values() if isinstance(m, _Metric)}
    assert by_name == {
        "twotier_feature_cache_hits": [3],
        "twotier_feature_cache_misses": [2, 4],
        "twotier_feature_cache_entries": [0, 5, 5, 9],  # 0: exported from the start
        "twotier_feature_cache_staleness_s": [0.4],
    }


# -- seen items ---------------------------------------------------------------------------


def test_seen_mask_reads_user_item_counters() -> None:
    docs: list[list[dict[str, Any] | None]] = [
        [{"views": 1.0}],
        [None, None, None],
        [{"views": 2.0}, None, {"views": 0.0}],
        [{"content_type": "gif"}, None, None],  # item data: no effect on the mask
    ]
    matrix = assemble_matrix(MEMES, docs, 3, {"position": 1.0}, now_ms=0)
    assert seen_mask(MEMES, matrix).tolist() == [True, False, False]
    assert not seen_mask(MOVIELENS, np.ones((2, len(MOVIELENS.columns())))).any()
