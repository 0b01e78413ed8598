"""The pure A/B statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twotier.experiment_stats import (
    ratio_difference,
    ratio_interval,
    ratio_variance,
    two_proportions,
)


def test_two_proportions_matches_a_hand_computed_z_test() -> None:
    r = two_proportions(120, 1000, 100, 1000)
    pooled = 220 / 2000
    z = 0.02 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert r.difference == pytest.approx(0.02)
    assert r.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert r.p_value == pytest.approx(0.1529, abs=1e-3)  # z = 1.429
    se = math.sqrt(0.12 * 0.88 / 1000 + 0.1 * 0.9 / 1000)
    assert r.low == pytest.approx(0.02 - 1.959964 * se, rel=1e-5)
    assert r.high == pytest.approx(0.02 + 1.959964 * se, rel=1e-5)
    assert r.relative == pytest.approx(0.2)


def test_two_proportions_without_users_is_undefined_not_significant() -> None:
    r = two_proportions(0, 0, 10, 100)
    assert math.isnan(r.difference) and r.p_value == 1.0


def test_two_proportions_rejects_counts_above_their_total() -> None:
    with pytest.raises(ValueError, match="x=5, n=4"):
        two_proportions(5, 4, 1, 10)


def test_ratio_variance_is_the_delta_method_over_users() -> None:
    num = np.array([1.0, 0.0, 2.0, 1.0])
    den = np.array([2.0, 2.0, 4.0, 2.0])
    ratio, variance = ratio_variance(num, den)
    assert ratio == pytest.approx(0.4)
    residual = num - 0.4 * den
    assert variance == pytest.approx(residual.var(ddof=1) / (4 * 2.5**2))


def test_ratio_with_one_user_or_no_denominator_has_no_variance() -> None:
    assert math.isnan(ratio_variance(np.array([1.0]), np.array([2.0]))[1])
    assert math.isnan(ratio_variance(np.array([0.0, 0.0]), np.array([0.0, 0.0]))[0])
    value, low, high = ratio_interval(np.array([1.0]), np.array([2.0]))
    assert value == 0.5 and math.isnan(low) and math.isnan(high)


def test_ratio_difference_of_identical_groups_is_zero_and_not_significant() -> None:
    num = np.array([1.0, 0.0, 2.0, 1.0])
    den = np.array([2.0, 2.0, 4.0, 2.0])
    d = ratio_difference(num, den, num, den)
    assert d.difference == 0.0 and d.p_value == pytest.approx(1.0)
    assert d.low < 0 < d.high


def test_an_experiment_that_never_served_has_not_concluded() -> None:
    import pandas as pd

    from twotier.experiments import Experiment, ExperimentGroup
    from twotier.readout import DAY_MS, compare, decide

    experiment = Experiment(
        name="ab",
        salt="s",
        groups=[
            ExperimentGroup(name="control", share=0.5, alias="champion"),
            ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
        ],
    )
    nobody = pd.DataFrame(columns=["group", "user_id", "recs", "hits", "smiled"])
    now = 100 * 365 * DAY_MS
    never = decide(experiment, compare(experiment, nobody, 1, 0, now), now)
    assert not never.concluded and "too few users" in never.reason
    # The same empty readout after max_days of a real generation concludes on duration.
    started = now - 15 * DAY_MS
    old = decide(experiment, compare(experiment, nobody, 1, started, now), now)
    assert old.concluded and "readout.max_days is 14" in old.reason
