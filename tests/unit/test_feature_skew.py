"""Training/serving skew without services: sampling, the logged row, the comparison, the verdict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twotier.feature_log import (
    FEATURES_KEY,
    FEATURES_TS_KEY,
    FeatureLogError,
    check_fraction,
    decode_features,
    encode_features,
    sample_request,
)
from twotier.feature_skew import (
    FeatureSkewError,
    Tolerance,
    comparable_columns,
    compare_features,
    declared_spec,
    judge,
)
from twotier.features.builtin import MOVIELENS
from twotier.features.spec import ProjectFeatures
from twotier.serve_apps.recommendation_log import LoggedFeatures

FEATURES = ProjectFeatures.model_validate(MOVIELENS)


# -- sampling -------------------------------------------------------------------------


def test_fraction_zero_never_samples_and_one_always_does() -> None:
    for draw in (0.0, 0.999999999, 0.5):

        def fixed(value: float = draw) -> float:
            return value

        assert not sample_request(0.0, fixed)
        assert sample_request(1.0, fixed)
        assert sample_request(1, fixed)  # an int is fine


def test_fraction_between_compares_the_draw() -> None:
    assert sample_request(0.25, lambda: 0.2499)
    assert not sample_request(0.25, lambda: 0.25)
    rng = np.random.default_rng(0)
    hits = sum(sample_request(0.1, rng.random) for _ in range(20_000))
    assert 1800 < hits < 2200


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), "0.1"])
def test_a_fraction_outside_zero_to_one_is_refused(bad: object) -> None:
    with pytest.raises(FeatureLogError, match="is not a probability"):
        check_fraction(bad)  # type: ignore[arg-type]
    with pytest.raises(FeatureLogError, match="is not a probability"):
        sample_request(bad)  # type: ignore[arg-type]


# -- the logged row -------------------------------------------------------------------


def test_float32_rows_round_trip_exactly_through_the_context() -> None:
    columns = ["user_stats.views", "item_stats.smile_rate", "user_stats.since_last_view_s"]
    rows = np.array([[3, 0.1, 1e9], [0, 1 / 3, 12.345678]], dtype=np.float32)
    logged = LoggedFeatures(columns, rows, read_ts=1_700_000_000_123)
    context = logged.context(1)
    assert context[FEATURES_TS_KEY] == "1700000000123"
    assert all(isinstance(v, str) for v in context.values())  # Map(String, String)
    decoded = decode_features(context[FEATURES_KEY])
    assert list(decoded) == columns
    assert np.array(list(decoded.values()), dtype=np.float32).tobytes() == rows[1].tobytes()
    assert " " not in context[FEATURES_KEY]  # compact


def test_bad_rows_and_bad_json_are_named() -> None:
    with pytest.raises(FeatureLogError, match="2 values for 3 columns"):
        encode_features(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(FeatureLogError, match="is not JSON"):
        decode_features("{not json")
    with pytest.raises(FeatureLogError, match="not a JSON object"):
        decode_features("[1, 2]")
    with pytest.raises(FeatureLogError, match="column 'a' holds 'x'"):
        decode_features(json.dumps({"a": "x"}))
    with pytest.raises(FeatureLogError, match="column 'a' holds True"):
        decode_features(json.dumps({"a": True}))


# -- what can be compared -------------------------------------------------------------


def test_request_features_are_skipped_and_offline_groups_compared() -> None:
    spec = FEATURES.model_spec("ranker")
    compared, skipped = comparable_columns(spec)
    assert set(compared) | set(skipped) == set(spec.columns())
    assert {c for c in spec.columns() if c.startswith("request.")} == set(skipped)
    assert "request.tier1_score" in skipped and "user_stats.views" in compared
    assert "affinity.genre_view_share" in compared
    online_only = spec.model_copy(
        update={
            "groups": tuple(
                g.model_copy(update={"offline": False}) if g.name == "user_genres" else g
                for g in spec.groups
            )
        }
    )
    compared, skipped = comparable_columns(online_only)
    assert "affinity.genre_view_share" in skipped  # reads the online-only user_genres
    assert all(c in skipped for c in spec.columns() if c.startswith("user_genres."))


def test_the_served_model_name_gives_the_declared_spec() -> None:
    spec, reason = declared_spec("movielens", FEATURES, "movielens.tier2.ranker/7")
    assert spec is not None and spec.model.name == "ranker" and reason == ""
    for served, why in [
        ("movielens.tier2.nope/1", "model 'nope' is not declared"),
        ("other.tier2.ranker/1", "is not 'movielens.tier2.<model>/<version>'"),
        ("movielens.tier2.ranker", "is not 'movielens.tier2.<model>/<version>'"),
    ]:
        spec, reason = declared_spec("movielens", FEATURES, served)
        assert spec is None and why in reason


# -- the comparison -------------------------------------------------------------------


def test_compare_counts_mismatches_beyond_the_tolerance() -> None:
    offline = pd.DataFrame({"a": [1.0, 2.0, 3.0, 1000.0], "b": [0.0, 0.0, 0.0, 0.0]})
    served = pd.DataFrame(
        {
            "a": [1.0 + 5e-7, 2.0 + 1.0, 3.0, 1000.5],  # within, off by 1, equal, rel 5e-4
            "b": [0.0, np.nan, 2e-6, 0.0],  # NaN: not logged; 2e-6 > abs 1e-6
        }
    )
    table = compare_features(served, offline, ["a", "b"]).set_index("feature")
    assert table.loc["a", "compared"] == 4 and table.loc["a", "mismatched"] == 1
    assert table.loc["a", "mismatch_rate"] == pytest.approx(0.25)
    assert table.loc["a", "max_abs_diff"] == pytest.approx(1.0)
    assert table.loc["a", "mean_abs_diff"] == pytest.approx((5e-7 + 1.0 + 0.5) / 4)
    assert table.loc["b", "compared"] == 3 and table.loc["b", "mismatched"] == 1
    loose = compare_features(served, offline, ["a", "b"], Tolerance(absolute=1.0, relative=0))
    assert loose["mismatched"].tolist() == [0, 0]


def test_compare_identical_frames_has_no_mismatch_and_float32_noise_passes() -> None:
    rng = np.random.default_rng(1)
    offline = pd.DataFrame(rng.normal(size=(200, 3)) * [1, 1e3, 1e8], columns=["x", "y", "z"])
    served = offline.astype(np.float32).astype(np.float64)
    table = compare_features(served, offline, ["x", "y", "z"])
    assert table["mismatched"].tolist() == [0, 0, 0]
    assert table["compared"].tolist() == [200, 200, 200]


def test_compare_refuses_misaligned_frames_and_missing_columns() -> None:
    with pytest.raises(FeatureSkewError, match="served has 1 rows but offline 2"):
        compare_features(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [1.0, 2.0]}), ["a"])
    with pytest.raises(FeatureSkewError, match=r"columns \['b'\] are not in both frames"):
        compare_features(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [1.0]}), ["a", "b"])
    with pytest.raises(FeatureSkewError, match="must be >= 0"):
        Tolerance(absolute=-1)


# -- the verdict ----------------------------------------------------------------------


def _rows(rates: dict[str, tuple[int, int]], day: str = "2026-12-01") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"day": day, "model": "p.tier2.ranker/1", "feature": f, "compared": n, "mismatched": m}
            for f, (n, m) in rates.items()
        ]
    )


def test_judge_fails_naming_exactly_the_features_over_the_threshold() -> None:
    rows = _rows({"user_stats.views": (100, 40), "item_stats.views": (100, 5), "x.y": (100, 0)})
    verdict = judge(rows, max_mismatch_rate=0.05, min_rows=50)
    assert not verdict.passed and verdict.severity == "ERROR"
    assert verdict.failing == {"user_stats.views": 0.4}  # 5% is not above 5%
    assert "user_stats.views 40.0%" in verdict.message and verdict.rows == 100
    assert next(iter(verdict.rates)) == "user_stats.views"


def test_judge_passes_within_the_threshold_and_warns_on_too_few_rows() -> None:
    passed = judge(_rows({"a.b": (100, 1)}), 0.05, 50)
    assert passed.passed and passed.severity is None and passed.failing == {}
    few = judge(_rows({"a.b": (10, 10)}), 0.05, 50)
    assert few.passed and few.severity == "WARN"
    assert "too few sampled rows to judge" in few.message
    empty = judge(_rows({}).reindex(columns=["day", "model", "feature", "compared"]), 0.05, 0)
    assert empty.passed and empty.severity == "WARN"


def test_judge_pools_days_and_names_models_when_several() -> None:
    rows = pd.concat([_rows({"a.b": (40, 0)}, "2026-12-01"), _rows({"a.b": (40, 8)}, "2026-12-02")])
    verdict = judge(rows, 0.05, 50)
    assert verdict.rows == 80 and verdict.failing == {"a.b": 0.1}
    other = _rows({"a.b": (80, 0)}).assign(model="p.tier2.other/2")
    both = judge(pd.concat([rows, other]), 0.05, 50)
    assert both.failing == {"p.tier2.ranker/1:a.b": 0.1} and both.rows == 160
