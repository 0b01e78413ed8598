"""Derivations at read time: rates with a prior, recency, defaults for unknown entities."""

from __future__ import annotations

import numpy as np
import pytest

from twotier.features.builtin import builtin_projects
from twotier.features.derive import group_matrix, raw_arrays
from twotier.features.spec import CounterFeature, FeatureGroup


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


DAY_MS = 86_400_000


def _decayed_group(extra: list[dict] | None = None) -> FeatureGroup:
    return FeatureGroup.model_validate(
        {
            "name": "g",
            "entity": "item",
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {"name": "recent", "kind": "counter", "action": "view", "half_life_days": 10},
                *(extra or []),
            ],
        }
    )


def test_a_decayed_counter_halves_every_half_life_and_is_stored_as_one_increment() -> None:
    group = _decayed_group()
    recent = group.features[1]
    assert isinstance(recent, CounterFeature)
    # Two views 10 days apart, read 10 days after the second: 1/4 + 1/2.
    t0 = recent.reference_ts + 100 * DAY_MS
    stored = recent.decay_weight(t0) + recent.decay_weight(t0 + 10 * DAY_MS)
    m = group_matrix(
        group, {"views": np.array([2.0]), "recent": np.array([stored])}, t0 + 20 * DAY_MS
    )
    assert m[0].tolist() == [2.0, pytest.approx(0.75)]
    # One row per request time, offline: the same stored value read at two times.
    times = np.array([t0 + 10 * DAY_MS, t0 + 30 * DAY_MS], dtype=np.float64)
    two = group_matrix(group, {"views": np.ones(2), "recent": np.full(2, stored)}, times)
    assert two[:, 1] == pytest.approx([1.5, 0.375])


def test_a_decayed_counter_refuses_events_too_far_from_its_reference() -> None:
    recent = _decayed_group().features[1]
    assert isinstance(recent, CounterFeature)
    with pytest.raises(ValueError, match="half-lives from reference_ts"):
        recent.decay_weight(recent.reference_ts + 20_000 * DAY_MS)


def test_a_rate_must_divide_counters_that_decay_alike() -> None:
    with pytest.raises(ValueError, match="decay differently"):
        _decayed_group(
            [{"name": "r", "kind": "rate", "numerator": "recent", "denominator": "views"}]
        )


def test_a_stored_field_that_is_no_column_is_still_read_by_its_rate() -> None:
    group = FeatureGroup.model_validate(
        {
            "name": "g",
            "entity": "item",
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {
                    "name": "total",
                    "kind": "counter",
                    "action": "view",
                    "agg": "sum",
                    "column": False,
                },
                {"name": "mean", "kind": "rate", "numerator": "total", "denominator": "views"},
            ],
        }
    )
    assert group.stored_fields() == ["views", "total"]
    assert group.columns() == ["views", "mean"]
    m = group_matrix(group, {"views": np.array([4.0]), "total": np.array([14.0])}, 0)
    assert m.tolist() == [[4.0, 3.5]]
