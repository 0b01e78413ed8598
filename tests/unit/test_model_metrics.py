"""Hold-out metrics, the popularity baseline and the parity gate, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from twotier.models.metrics import (
    MetricsError,
    PopularityBaseline,
    auc,
    bootstrap_ratio,
    ndcg_at_k,
    per_user_metrics,
    ranking_metrics,
    recall_at_k,
)
from twotier.models.parity import ParityError, check_parity
from twotier.models.tier_one import (
    TierOneError,
    TierOneParams,
    TierOneSession,
    check_tier_one_parity,
    export_tier_one,
    train_tier_one,
)


def test_ndcg_by_hand() -> None:
    # One hit at rank 2: DCG = 1/log2(3); the ideal puts it first (IDCG = 1).
    assert ndcg_at_k(["a", "b", "c"], {"b"}, 3) == pytest.approx(1 / math.log2(3))
    # Hits at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2(3)).
    expected = 1.5 / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "b", "c", "d"], {"a", "c"}, 3) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a"}, 2) == 0.0
    assert ndcg_at_k(["x", "a"], {"a"}, 1) == 0.0  # beyond the cut-off
    assert ndcg_at_k(["a"], set(), 5) == 0.0


def test_recall_by_hand() -> None:
    assert recall_at_k(["a", "b", "c"], {"a", "d", "e", "f"}, 2) == pytest.approx(0.25)
    assert recall_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(1.0)
    assert recall_at_k(["a", "b", "c"], {"c"}, 2) == 0.0
    assert recall_at_k(["a"], set(), 1) == 0.0


def test_auc_by_hand() -> None:
    # Pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, 0.1) ok, (0.8, 0.4) ok.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auc([1, 0, 1], [0.9, 0.1, 0.8]) == pytest.approx(1.0)
    assert auc(np.array([1, 0]), np.array([0.0, 1.0])) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1], [0.1, 0.2], "both classes"),
        ([0, 1, 1], [0.1, 0.2], "same length"),
        ([0, 2], [0.1, 0.2], "0 or 1"),
    ],
)
def test_auc_refuses_bad_input(labels: list[int], scores: list[float], message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        auc(labels, scores)


def test_ranking_metrics_average_over_users_with_relevant_items() -> None:
    ranked = {"u1": ["a", "b"], "u2": ["c", "d"], "u3": ["a"]}
    relevant = {"u1": {"b"}, "u2": {"c", "x"}, "u3": set(), "u4": {"a"}}
    out = ranking_metrics(ranked, relevant, k=2, ndcg_k=2)
    # u1: 1/log2(3) and 1; u2: 1/(1 + 1/log2(3)) and 1/2; u4 got nothing: 0 and 0.
    ndcg = (1 / math.log2(3) + 1 / (1 + 1 / math.log2(3)) + 0) / 3
    assert out == {"ndcg_at_2": pytest.approx(ndcg), "recall_at_2": pytest.approx(0.5), "users": 3}
    with pytest.raises(MetricsError, match="no user has a relevant item"):
        ranking_metrics(ranked, {"u1": set()}, k=2)
    with pytest.raises(MetricsError, match="k=0"):
        ranking_metrics(ranked, relevant, k=0)


def test_popularity_ranks_by_training_views_and_skips_seen_items() -> None:
    base = PopularityBaseline.fit(["c", "a", "b", "b", "c", "b", "d"])
    assert base.item_ids == ["b", "c", "a", "d"]  # ties by id
    ranked = base.rank(["u1", "u2"], k=2, exclude={"u1": {"b"}})
    assert ranked == {"u1": ["c", "a"], "u2": ["b", "c"]}
    relevant = {"u1": {"a"}, "u2": {"d"}}
    out = ranking_metrics(ranked, relevant, k=2, ndcg_k=2)
    assert out["recall_at_2"] == pytest.approx(0.5)
    with pytest.raises(MetricsError, match="at least one training view"):
        PopularityBaseline.fit([])


def test_parity_gate() -> None:
    native = np.array([0.1, 0.5, 0.9])
    assert check_parity("m", native, native + 5e-5) == pytest.approx(5e-5)
    with pytest.raises(ParityError, match=r"differ by 1\.000e-03 .*registration refused"):
        check_parity("m", native, native + np.array([0, 1e-3, 0]))
    with pytest.raises(ParityError, match="shape"):
        check_parity("m", native, native[:2])
    with pytest.raises(ParityError, match="non-finite"):
        check_parity("m", native, np.array([0.1, np.nan, 0.9]))


def _toy_interactions() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 600)
    items = (users % 4) * 10 + rng.integers(0, 10, 600)  # four taste clusters
    return pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str)})


def test_tier_one_onnx_top_k_equals_numpy_and_falls_back_to_popularity() -> None:
    interactions = _toy_interactions()
    model = train_tier_one(interactions, TierOneParams(factors=4, iterations=4, top_k=5))
    onnx_model = export_tier_one(model)
    assert check_tier_one_parity(model, onnx_model, [*model.user_ids, "stranger"]) <= 1e-4
    session = TierOneSession(onnx_model)
    indices, scores = session.run(session.user_indices(["0", "stranger"]))
    assert indices.shape == (2, 5)
    _, native_scores = model.top_k(model.user_indices(["0", "stranger"]), 5)
    np.testing.assert_allclose(scores, native_scores, atol=1e-5)
    # User 0 is in cluster 0: its candidates are items 0..9.
    assert all(int(session.item_ids[j]) < 10 for j in indices[0])
    popular = interactions["item_id"].value_counts()
    assert session.item_ids[indices[1][0]] in set(popular[popular == popular.iloc[0]].index)
    with pytest.raises(TierOneError, match="lack columns"):
        train_tier_one(interactions.rename(columns={"item_id": "movie"}))
    with pytest.raises(TierOneError, match="no training interactions"):
        train_tier_one(interactions.iloc[:0])


DAY_MS = 86_400_000


def test_recent_popularity_counts_only_the_window_before_the_cutoff() -> None:
    views = pd.DataFrame(
        {
            "item_id": ["old", "old", "old", "new", "new", "late"],
            "ts": [0, 1, 2, 100 * DAY_MS, 101 * DAY_MS, 200 * DAY_MS],
        }
    )
    recent = PopularityBaseline.fit_recent(views, until_ts=150 * DAY_MS, window_days=60)
    assert recent.item_ids == ["new"]  # "old" is outside the window, "late" after the cut
    assert PopularityBaseline.fit(views["item_id"]).item_ids[0] == "old"
    with pytest.raises(MetricsError, match="widen the recent-popularity window"):
        PopularityBaseline.fit_recent(views, until_ts=150 * DAY_MS, window_days=1)
    with pytest.raises(MetricsError, match="positive number of days"):
        PopularityBaseline.fit_recent(views, until_ts=150 * DAY_MS, window_days=0)


def test_per_user_metrics_and_the_paired_bootstrap() -> None:
    ranked = {"a": ["x", "y"], "b": ["y", "x"]}
    relevant = {"a": {"x"}, "b": {"x"}, "c": {"z"}}
    ndcg, recall = per_user_metrics(ranked, relevant, ["a", "b", "c"], k=2, ndcg_k=2)
    np.testing.assert_allclose(ndcg, [1.0, 1 / math.log2(3), 0.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.0])
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.3, 400)
    ratio, low, high = bootstrap_ratio(base * 2.0, base, resamples=500)
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    noisy = base * 1.1 + rng.normal(0, 0.2, 400)
    ratio, low, high = bootstrap_ratio(noisy, base, resamples=500)
    assert low < ratio < high and low < 1.0 < high  # a noisy 10% gain is not significant
    with pytest.raises(MetricsError, match="equal, non-empty"):
        bootstrap_ratio(base, base[:3])


def test_cold_fallback_is_recent_popularity() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u1", "u2", "u3", "u4"],
            "item_id": ["classic", "classic", "classic", "fresh", "fresh", "x", "x"],
            "ts": [0, 1, 2, 999 * DAY_MS, 999 * DAY_MS, 5, 6],
        }
    )
    params = TierOneParams(factors=2, iterations=2, top_k=2, fallback_window_days=30)
    session = TierOneSession(export_tier_one(train_tier_one(frame, params)))
    assert session.candidates(["stranger"], k=1)["stranger"] == ["fresh"]
    everything = TierOneParams(factors=2, iterations=2, top_k=2, fallback_window_days=None)
    session = TierOneSession(export_tier_one(train_tier_one(frame, everything)))
    assert session.candidates(["stranger"], k=1)["stranger"] == ["classic"]
