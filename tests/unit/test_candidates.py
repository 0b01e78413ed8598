"""Tier two's candidates: tier one's best, then recent popularity, with score and rank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotier.features.spec import CandidateSpec, ModelFeatures
from twotier.models.candidates import (
    CandidateError,
    label_cuts,
    merge_candidates,
    tier_one_candidates,
)
from twotier.models.tier_one import TierOneParams, TierOneSession, export_tier_one, train_tier_one

pytestmark = pytest.mark.unit

DAY = 86_400_000


def _session() -> TierOneSession:
    # Users 1-3 view items a-d; "e" and "f" are viewed often but only long ago / recently.
    rows = [
        ("1", "a", 1), ("1", "b", 2), ("2", "a", 3), ("2", "c", 4), ("3", "d", 5),
        ("4", "e", 6), ("5", "e", 7), ("6", "e", 8),
        ("7", "f", 900), ("8", "f", 901),
    ]  # fmt: skip
    views = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    views["ts"] = views["ts"].astype("int64") * DAY
    return TierOneSession(
        export_tier_one(train_tier_one(views, TierOneParams(factors=4, fallback_window_days=30)))
    )


def test_merge_puts_tier_one_first_then_new_popular_items_beyond_its_list() -> None:
    spec = CandidateSpec(tier_one=3, popular=2)
    merged = merge_candidates(
        ["a", "b", "c", "d"], [0.9, 0.7, 0.5, 0.4], ["c", "x", "y", "z"], spec
    )
    assert merged.items == ["a", "b", "c", "x", "y"]
    assert merged.scores.tolist() == [0.9, 0.7, 0.5, 0.5, 0.5]  # beyond the list: last score
    assert merged.ranks.tolist() == [0, 1, 2, 3, 3]
    # Rank in recent popularity; a and b are not in its first tier_one + popular items.
    assert merged.popular_ranks.tolist() == [5, 5, 0, 1, 2]
    assert merged.request_features(["tier1_rank", "position"]) == {"tier1_rank": [0, 1, 2, 3, 3]}


def test_no_popular_candidates_keeps_tier_one_alone() -> None:
    merged = merge_candidates(["a", "b"], [0.9, 0.7], ["x"], CandidateSpec(tier_one=5))
    assert merged.items == ["a", "b"]


def test_tier_one_candidates_skip_seen_items_and_flag_cold_users() -> None:
    session = _session()
    spec = CandidateSpec(tier_one=2, popular=1)
    found = tier_one_candidates(session, ["1", "stranger"], spec, {"1": {"a", "b"}})
    assert not {"a", "b"} & set(found["1"].items)
    assert len(found["1"].items) == 3 and found["1"].ranks.tolist() == [0, 1, 2]
    assert found["1"].cold is False and found["stranger"].cold is True
    # The fallback is popularity of the last 30 days: "f" leads it.
    assert found["stranger"].items[0] == "f"
    assert found["stranger"].popular_ranks[0] == 0


def test_label_cuts_are_quantiles_of_the_views_and_refuse_bad_input() -> None:
    ts = np.arange(1, 101, dtype=np.int64)
    assert label_cuts(ts, [0.5, 0.9]) == [50, 90]
    with pytest.raises(CandidateError, match="strictly between 0 and 1"):
        label_cuts(ts, [0.5, 1.0])
    with pytest.raises(CandidateError, match="no training views"):
        label_cuts(np.array([], dtype=np.int64), [0.5])


def test_candidate_features_are_the_declared_request_features_the_platform_fills() -> None:
    model = ModelFeatures.model_validate(
        {
            "name": "ranker",
            "feature_groups": ["g"],
            "request_features": [{"name": "position"}, {"name": "tier1_rank"}],
        }
    )
    assert model.candidate_features() == ["tier1_rank"]
    with pytest.raises(ValueError, match="declared twice"):
        ModelFeatures.model_validate(
            {
                "name": "r",
                "feature_groups": ["g"],
                "request_features": [{"name": "a"}, {"name": "a"}],
            }
        )
