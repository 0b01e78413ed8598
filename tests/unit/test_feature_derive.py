"""Derivations at read time: rates with a prior, recency, defaults for unknown entities."""

from __future__ import annotations

import numpy as np
import pytest

from twotier.features.builtin import builtin_projects
from twotier.features.derive import group_matrix, raw_arrays


def test_rates_recency_and_defaults() -> None:
    group = builtin_projects()["movielens"].group("user_stats")
    docs = [
        {"views": 10, "smiles": 4, "dislikes": 1, "rating_sum": 35.0, "last_view_ts": 1_000},
        None,  # an unknown user: declared defaults, never an error
        {"views": 0, "smiles": 0},  # known but partial: missing fields default too
    ]
    m = group_matrix(group, raw_arrays(group, docs), now_ms=61_000)
    cols = group.columns()
    row = dict(zip(cols, m[0], strict=True))
    assert row["views"] == 10 and row["smiles"] == 4
    assert row["smile_rate"] == pytest.approx((4 + 0.3 * 5) / (10 + 5))
    assert row["mean_rating"] == pytest.approx((35 + 3.5 * 5) / (10 + 5))
    assert row["since_last_view_s"] == pytest.approx(60.0)
    unknown = dict(zip(cols, m[1], strict=True))
    assert unknown["views"] == 0 and unknown["smile_rate"] == pytest.approx(0.3)
    assert unknown["since_last_view_s"] == 1e9
    assert m.shape == (3, len(cols))


def test_per_row_request_time_for_offline_use() -> None:
    group = builtin_projects()["movielens"].group("item_stats")
    docs = [{"last_view_ts": 1_000}, {"last_view_ts": 1_000}]
    m = group_matrix(group, raw_arrays(group, docs), now_ms=np.array([2_000.0, 11_000.0]))
    recency = m[:, group.columns().index("since_last_view_s")]
    assert recency.tolist() == [1.0, 10.0]


def test_zero_prior_weight_and_zero_denominator_gives_prior_mean() -> None:
    from twotier.features.spec import FeatureGroup

    group = FeatureGroup.model_validate(
        {
            "name": "g",
            "entity": "item",
            "features": [
                {"name": "v", "kind": "counter", "action": "view"},
                {"name": "s", "kind": "counter", "action": "smile"},
                {
                    "name": "r",
                    "kind": "rate",
                    "numerator": "s",
                    "denominator": "v",
                    "prior_mean": 0.25,
                },
            ],
        }
    )
    m = group_matrix(group, raw_arrays(group, [{"v": 0, "s": 0}, {"v": 4, "s": 1}]), 0)
    assert m[:, 2].tolist() == [0.25, 0.25]
