"""Both tiers on MovieLens small in a real embedded chdb: ONNX export, parity, hold-out metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from offline_stores import with_offline_store
from onnx import numpy_helper

from twotier.config import Settings
from twotier.features.offline import materialize_all_snapshots
from twotier.models.candidates import candidate_rows_before, tier_one_candidates
from twotier.models.data import read_interactions, temporal_cutoff
from twotier.models.evaluate import evaluate_two_tiers
from twotier.models.parity import ParityError
from twotier.models.tier_one import (
    TierOneModel,
    TierOneParams,
    TierOneSession,
    check_tier_one_parity,
    export_tier_one,
    train_tier_one,
)
from twotier.models.tier_two import TierTwoModel, TierTwoSession, train_tier_two
from twotier.offline_store import OfflineStore, open_offline_store
from twotier.offline_store.base import events_frame
from twotier.replay import movielens_events

PROJECT = "movielens"
K = 100


@pytest.fixture(scope="module")
def local(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("models-movielens") / "offline"
    return with_offline_store(settings, data)


@pytest.fixture(scope="module")
def store(local: Settings, movielens: Path) -> Iterator[OfflineStore]:
    started = time.perf_counter()
    with open_offline_store(local) as opened:
        opened.ensure_tables(PROJECT)
        frame = events_frame(movielens_events(PROJECT, movielens))
        assert opened.insert_events(PROJECT, frame) == len(frame)
        materialize_all_snapshots(opened, local, PROJECT)
        print(f"\nloaded {len(frame)} events + snapshots in {time.perf_counter() - started:.1f}s")
        yield opened


@pytest.fixture(scope="module")
def cutoff(store: OfflineStore) -> int:
    return temporal_cutoff(store, PROJECT, test_fraction=0.2)


@pytest.fixture(scope="module")
def tier_one(store: OfflineStore, cutoff: int) -> TierOneModel:
    views = read_interactions(store, PROJECT, "view", until_ts=cutoff)
    assert (views["ts"] < cutoff).all()
    return train_tier_one(views, TierOneParams(top_k=K))


@pytest.fixture(scope="module")
def tier_one_onnx(tier_one: TierOneModel) -> onnx.ModelProto:
    return export_tier_one(tier_one)


@pytest.fixture(scope="module")
def tier_two(store: OfflineStore, local: Settings, cutoff: int) -> TierTwoModel:
    return train_tier_two(store, local, PROJECT, cutoff)


def _holdout_users(store: OfflineStore, cutoff: int) -> list[str]:
    return sorted(set(read_interactions(store, PROJECT, "view", since_ts=cutoff)["user_id"]))


def test_tier_one_onnx_returns_the_numpy_top_k(
    store: OfflineStore, cutoff: int, tier_one: TierOneModel, tier_one_onnx: onnx.ModelProto
) -> None:
    users = _holdout_users(store, cutoff)
    assert any(u in tier_one.user_ids for u in users) and any(
        u not in tier_one.user_ids for u in users
    )
    gap = check_tier_one_parity(tier_one, tier_one_onnx, users)
    assert gap <= 1e-4

    session = TierOneSession(tier_one_onnx.SerializeToString())
    assert session.item_ids == tier_one.item_ids and session.top_k == K
    index = session.user_indices(users)
    indices, scores = session.run(index)
    assert indices.shape == scores.shape == (len(users), K) and indices.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    native = tier_one.scores(index)
    np.testing.assert_allclose(np.take_along_axis(native, indices, axis=1), scores, atol=1e-4)
    np.testing.assert_allclose(np.sort(native, axis=1)[:, ::-1][:, :K], scores, atol=1e-4)

    # Unknown users (also -1) get the popularity row: the items most viewed in the last
    # fallback_window_days of training first.
    stranger, wrapped = session.run(np.array([session.fallback_index, -1]), k=5)[0]
    assert stranger.tolist() == wrapped.tolist()
    views = read_interactions(store, PROJECT, "view", until_ts=cutoff)
    window = TierOneParams().fallback_window_days
    assert window is not None
    recent = views[views["ts"] >= views["ts"].max() - int(window * 86_400_000)]
    counts = recent["item_id"].value_counts()
    top = [session.item_ids[j] for j in stranger]
    assert {counts[i] for i in top} == set(counts.iloc[:5]) or counts[top[0]] == counts.iloc[0]

    # The k input overrides the default and seen items are skipped.
    user = tier_one.user_ids[0]
    full = session.candidates([user], k=20)[user]
    skipped = session.candidates([user], k=20, exclude={user: set(full[:3])})[user]
    assert skipped[:17] == full[3:] and len(skipped) == 20


def test_a_tampered_tier_one_graph_fails_the_parity_gate(
    tier_one: TierOneModel, tier_one_onnx: onnx.ModelProto
) -> None:
    tampered = onnx.ModelProto()
    tampered.CopyFrom(tier_one_onnx)
    for i, tensor in enumerate(tampered.graph.initializer):
        if tensor.name == "item_factors_t":
            values = numpy_helper.to_array(tensor).copy()
            values[:, 0] += 0.01
            tampered.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, tensor.name))
    with pytest.raises(ParityError, match="registration refused"):
        check_tier_one_parity(tier_one, tampered, tier_one.user_ids[:50])


def test_tier_two_matches_xgboost_and_beats_chance(tier_two: TierTwoModel) -> None:
    metrics = tier_two.metrics
    print(f"\ntier two: {metrics}")
    assert metrics["parity_max_abs_diff"] <= 1e-4
    assert metrics["auc"] > 0.6
    assert metrics["train_rows"] > metrics["test_rows"] > 1000
    session = TierTwoSession(tier_two.onnx_model)
    assert session.spec == tier_two.spec and session.n_features == len(tier_two.columns)
    with pytest.raises(ValueError, match="shape"):
        session.probabilities(np.zeros((2, 3)))


def test_two_tiers_beat_the_popularity_baseline(
    store: OfflineStore,
    local: Settings,
    cutoff: int,
    tier_one_onnx: onnx.ModelProto,
    tier_two: TierTwoModel,
) -> None:
    started = time.perf_counter()
    metrics = evaluate_two_tiers(
        store, local, PROJECT, tier_one_onnx, tier_two.onnx_model, cutoff, k=K
    )
    print(f"\nevaluation in {time.perf_counter() - started:.1f}s: {metrics}")
    assert metrics["eval_users"] > 50 and metrics["eval_known_users"] > 10
    # The ranker's declared mix: tier one's 200 best, then 100 of recent popularity.
    mix = tier_two.spec.model.candidates
    assert metrics["eval_candidate_rows"] == metrics["eval_users"] * (mix.tier_one + mix.popular)
    ndcg_gain = metrics["two_tier_ndcg_at_10"] - metrics["popularity_ndcg_at_10"]
    recall_gain = metrics[f"two_tier_recall_at_{K}"] - metrics[f"popularity_recall_at_{K}"]
    assert ndcg_gain > 0 and recall_gain > 0, metrics
    assert metrics["eval_known_users"] + metrics["eval_cold_users"] == metrics["eval_users"]
    for split in ("", "known_", "cold_"):
        for baseline in ("popularity", "recent_popularity"):
            key = f"two_tier_{split}ndcg_ratio_vs_{baseline}"
            assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    # Cold users get tier one's fallback (recent popularity), so tier one alone on them
    # is close to the recent-popularity baseline of the same window.
    assert metrics["tier_one_cold_ndcg_at_10"] > metrics["popularity_cold_ndcg_at_10"]
    # Trained on tier one's candidates, the ranker improves on tier one's own order.
    assert metrics["two_tier_ndcg_at_10"] > metrics["tier_one_ndcg_at_10"], metrics


def test_candidate_rows_see_only_a_tier_one_trained_before_their_cut(
    store: OfflineStore, local: Settings, cutoff: int
) -> None:
    """No leakage: each label cut's tier-one scores come from views strictly before it."""
    spec = local.project_features(PROJECT).model_spec("ranker")
    rows, last = candidate_rows_before(store, local, PROJECT, spec, cutoff, (0.8, 0.9))
    cuts = sorted(rows["ts"].unique())
    assert len(cuts) == 2 and cuts[-1] == last < cutoff
    views = read_interactions(store, PROJECT, "view", until_ts=cutoff)
    first = rows[rows["ts"] == cuts[0]]
    user = str(first["user_id"].iloc[0])
    mine = first[first["user_id"] == user]
    before = views[views["ts"] < cuts[0]]
    honest = TierOneSession(export_tier_one(train_tier_one(before)))
    seen = {user: set(before.loc[before["user_id"] == user, "item_id"])}
    expected = tier_one_candidates(honest, [user], spec.model.candidates, seen)[user]
    assert mine["item_id"].tolist() == expected.items
    np.testing.assert_allclose(mine["request.tier1_score"], expected.scores, rtol=1e-6)
    np.testing.assert_array_equal(mine["request.tier1_rank"], expected.ranks)
    # A tier one that also saw the views after the cut would have proposed other items.
    leaky = TierOneSession(export_tier_one(train_tier_one(views)))
    assert (
        tier_one_candidates(leaky, [user], spec.model.candidates, seen)[user].items
        != mine["item_id"].tolist()
    )
    # No candidate is an item the user viewed before the cut; labels are later smiles.
    assert not set(mine["item_id"]) & seen[user]
    later = read_interactions(store, PROJECT, "smile", since_ts=cuts[0], until_ts=cutoff)
    smiled = set(later.loc[later["user_id"] == user, "item_id"])
    assert mine["label"].tolist() == [int(i in smiled) for i in mine["item_id"]]
