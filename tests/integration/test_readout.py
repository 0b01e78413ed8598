"""Outcome attribution and the experiment readout on a real embedded chdb.

Attribution: hits within the window, nothing before the recommendation or past the window,
the latest recommendation of an item takes the credit, and a re-run or a replay of the
same events changes nothing. Statistics: a known synthetic effect is detected end to end
(events → attribution → readout), and A/A simulations are significant about as often as
the nominal level.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.experiment_stats import ratio_difference, two_proportions
from twotier.experiments import Experiment, ExperimentGroup, ExperimentReadout
from twotier.features.spec import ProjectFeatures
from twotier.infra.service import Service
from twotier.offline_store import open_offline_store
from twotier.offline_store.base import OfflineStore
from twotier.pipelines.assets.experiments.experiment_readout import (
    HARM_CHECK,
    SAMPLE_CHECK,
    make_experiment_readout,
)
from twotier.pipelines.assets.experiments.recommendation_outcomes import (
    make_recommendation_outcomes,
)
from twotier.pipelines.assets.partitions import daily_partitions
from twotier.pipelines.resources import make_resources
from twotier.readout import (
    DAY_MS,
    OUTCOMES_TABLE,
    READOUT_TABLE,
    attribute,
    day_key,
    day_start_ms,
    readout,
)

PROJECT = "readout_it"
DAY = "2026-12-01"
D = day_start_ms(DAY)
WINDOW_S = 3600
EXPERIMENT = Experiment(
    name="ab",
    salt="readout-test",
    shuffle=1,
    groups=(
        ExperimentGroup(name="control", share=0.5, alias="champion"),
        ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
    ),
    readout=ExperimentReadout(window_s=WINDOW_S, min_users=100),
)


def _rec(
    request: str,
    user: str,
    item: str,
    ts: int,
    group: str = "control",
    experiment: str = EXPERIMENT.name,
) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "event_id": f"rec-{request}-{item}",
        "user_id": user,
        "item_id": item,
        "action": "recommendation",
        "value": 1.0,
        "ts": ts,
        "context": {
            "request_id": request,
            "rank": "0",
            "experiment": experiment,
            "group": group,
            "shuffle": "1",
        },
    }


def _event(user: str, item: str, ts: int, action: str = "view") -> dict[str, Any]:
    return {
        "project": PROJECT,
        "event_id": f"ev-{user}-{item}-{ts}-{action}",
        "user_id": user,
        "item_id": item,
        "action": action,
        "value": 1.0,
        "ts": ts,
        "context": {},
    }


@pytest.fixture(scope="module")
def features(settings: Settings) -> ProjectFeatures:
    return settings.project_features("movielens").model_copy(update={"experiments": (EXPERIMENT,)})


@pytest.fixture
def store(
    settings: Settings, features: ProjectFeatures, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineStore]:
    data = tmp_path_factory.mktemp("readout") / "offline"
    local = with_offline_store(settings, data, {PROJECT: features})
    with open_offline_store(local) as opened:
        opened.ensure_tables(PROJECT)
        yield opened


ATTRIBUTION_EVENTS = [
    # a: viewed before (never counts) and after (a hit), then smiled on.
    _rec("r1", "u1", "a", D + 1000),
    _event("u1", "a", D + 500),
    _event("u1", "a", D + 2000),
    _event("u1", "a", D + 3000, "smile"),
    # b: the view shares the recommendation's millisecond: not strictly after, no hit.
    _rec("r1", "u1", "b", D + 1000),
    _event("u1", "b", D + 1000),
    # c: viewed one ms past the window: a miss.
    _rec("r2", "u2", "c", D + 1000, "treatment"),
    _event("u2", "c", D + 1000 + WINDOW_S * 1000 + 1),
    # e: viewed exactly at the window's end: a hit (the window is inclusive).
    _rec("r2", "u2", "e", D + 1000, "treatment"),
    _event("u2", "e", D + 1000 + WINDOW_S * 1000),
    # d: recommended twice, viewed after both: the latest recommendation takes the credit.
    _rec("r3", "u3", "d", D + 1000, "treatment"),
    _rec("r4", "u3", "d", D + 5000, "treatment"),
    _event("u3", "d", D + 6000),
]


def _outcomes(store: OfflineStore) -> pd.DataFrame:
    table = store.table(PROJECT, "recommendation_outcomes")
    frame = store.query_df(
        f"SELECT rec_id, hit, smiled, first_hit_ts FROM {table} FINAL ORDER BY rec_id"
    )
    return frame.set_index("rec_id")


def test_attribution_hits_misses_same_ms_last_touch_rerun_and_replay(
    store: OfflineStore, features: ProjectFeatures
) -> None:
    frame = pd.DataFrame(ATTRIBUTION_EVENTS)
    store.insert_events(PROJECT, frame)
    first = attribute(store, PROJECT, features, [DAY], now_ms=D + 2 * DAY_MS)
    assert first[DAY] == {"recommendations": 6, "hits": 3, "smiled": 1, "complete": True}
    rows = _outcomes(store)
    hits = rows["hit"].astype(int).to_dict()
    assert hits == {
        "rec-r1-a": 1,  # viewed after, within the window
        "rec-r1-b": 0,  # same millisecond: not strictly after the recommendation
        "rec-r2-c": 0,  # outside the window
        "rec-r2-e": 1,  # at the window's end
        "rec-r3-d": 0,  # an earlier recommendation of the same item loses the credit
        "rec-r4-d": 1,  # last touch
    }
    # The view before the recommendation is not its first hit; the smile marks it smiled.
    assert int(rows.loc["rec-r1-a", "first_hit_ts"]) == D + 2000
    assert int(rows.loc["rec-r1-a", "smiled"]) == 1
    assert int(rows.loc["rec-r1-b", "first_hit_ts"]) == 0

    # A re-run of the same day, and a replay of the same events, change nothing.
    assert attribute(store, PROJECT, features, [DAY], now_ms=D + 2 * DAY_MS) == first
    pd.testing.assert_frame_equal(_outcomes(store), rows)
    store.insert_events(PROJECT, frame)
    assert attribute(store, PROJECT, features, [DAY], now_ms=D + 2 * DAY_MS) == first
    pd.testing.assert_frame_equal(_outcomes(store), rows)
    table = store.table(PROJECT, "recommendation_outcomes")
    assert int(store.query_df(f"SELECT count() AS n FROM {table}")["n"].iloc[0]) == 6


def test_attribution_of_a_day_is_incomplete_before_the_window_closes(
    store: OfflineStore, features: ProjectFeatures
) -> None:
    store.insert_events(PROJECT, pd.DataFrame(ATTRIBUTION_EVENTS[:4]))
    result = attribute(store, PROJECT, features, [DAY], now_ms=D + DAY_MS)
    assert result[DAY]["complete"] is False
    assert result[DAY]["hits"] == 1


def test_last_touch_holds_across_the_day_boundary(
    store: OfflineStore, features: ProjectFeatures
) -> None:
    # Recommended just before midnight and again just after, viewed after both: only the
    # second (next day's) recommendation is a hit, whichever day is attributed first.
    next_day = day_key(D + DAY_MS)
    end = D + DAY_MS
    store.insert_events(
        PROJECT,
        pd.DataFrame(
            [
                _rec("late", "u9", "z", end - 1000),
                _rec("early", "u9", "z", end + 500),
                _event("u9", "z", end + 1000),
            ]
        ),
    )
    counted = attribute(store, PROJECT, features, [DAY, next_day], now_ms=end + 2 * DAY_MS)
    assert counted[DAY]["hits"] == 0
    assert counted[next_day]["hits"] == 1
    assert _outcomes(store)["hit"].astype(int).to_dict() == {"rec-early-z": 1, "rec-late-z": 0}


def _simulated_events(
    users: int,
    p_control: float,
    p_treatment: float,
    seed: int,
    day: int = D,
    experiment: str = EXPERIMENT.name,
) -> pd.DataFrame:
    """Recommendations of 3 items to each user and a view with the group's probability."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        group = "treatment" if u % 2 else "control"
        p = p_treatment if u % 2 else p_control
        ts = day + 10_000 + u * 1000
        request = f"{experiment}-{day}-{u}"
        for k in range(3):
            item = f"i{k}"
            rows.append(_rec(request, f"u{u}", item, ts, group, experiment))
            if rng.random() < p:
                rows.append(_event(f"u{u}", item, ts + 60_000))
    return pd.DataFrame(rows)


def test_a_known_effect_is_detected_end_to_end(
    store: OfflineStore, features: ProjectFeatures
) -> None:
    store.insert_events(PROJECT, _simulated_events(4000, 0.08, 0.12, seed=7))
    counted = attribute(store, PROJECT, features, [DAY], now_ms=D + 2 * DAY_MS)
    assert counted[DAY]["recommendations"] == 12_000
    result = readout(store, PROJECT, EXPERIMENT, until_ms=D + DAY_MS)
    assert [g.group for g in result.groups] == ["control", "treatment"]
    assert [g.users for g in result.groups] == [2000, 2000]
    assert not result.too_small
    diff = result.groups[1].differences["hit_rate"]
    assert 0.08 - 0.015 < diff.control < 0.08 + 0.015
    assert 0.12 - 0.015 < diff.treatment < 0.12 + 0.015
    assert diff.difference > 0 and diff.p_value < 0.05
    assert 0 < diff.low < diff.high
    assert "treatment" in result.significant()
    assert not result.harmed()


def test_an_effect_is_detected_by_the_pure_statistics() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    recs_t = np.full(n, 3.0)
    recs_c = np.full(n, 3.0)
    hits_t = rng.binomial(3, 0.12, n).astype(np.float64)
    hits_c = rng.binomial(3, 0.08, n).astype(np.float64)
    diff = ratio_difference(hits_t, recs_t, hits_c, recs_c)
    assert diff.difference > 0 and diff.p_value < 0.05 and diff.low > 0
    users = two_proportions(int((hits_t > 0).sum()), n, int((hits_c > 0).sum()), n)
    assert users.difference > 0 and users.p_value < 0.05 and users.low > 0


def test_aa_simulations_are_significant_near_the_nominal_rate() -> None:
    rng = np.random.default_rng(2026)
    runs, n = 200, 1000
    ratio_hits = 0
    user_hits = 0
    for _ in range(runs):
        recs_t = rng.integers(1, 10, n).astype(np.float64)
        recs_c = rng.integers(1, 10, n).astype(np.float64)
        # Users differ in their propensity (clustered hits): the delta method must hold.
        p_t = rng.beta(1, 9, n)
        p_c = rng.beta(1, 9, n)
        hits_t = rng.binomial(recs_t.astype(int), p_t).astype(np.float64)
        hits_c = rng.binomial(recs_c.astype(int), p_c).astype(np.float64)
        ratio_hits += ratio_difference(hits_t, recs_t, hits_c, recs_c).significant(0.05)
        user_hits += two_proportions(
            int((hits_t > 0).sum()), n, int((hits_c > 0).sum()), n
        ).significant(0.05)
    assert 0.01 < ratio_hits / runs < 0.09
    assert 0.01 < user_hits / runs < 0.09


DG_PROJECT = "readout_dg"
SMALL = EXPERIMENT.model_copy(update={"name": "small", "salt": "small-test"})
DAYS = [DAY, day_key(D + DAY_MS)]


def test_dagster_assets_store_days_plot_and_warn_on_harm_and_small_samples(
    settings: Settings,
    mlflow_server: Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("readout-dagster")
    features = settings.project_features("movielens").model_copy(
        update={"experiments": (EXPERIMENT, SMALL)}
    )
    local = with_offline_store(settings, root / "offline", {DG_PROJECT: features})
    # "ab": treatment much worse than control on both days; "small": 10 users a day.
    frames = [
        _simulated_events(1600, 0.12, 0.04, seed=k, day=day_start_ms(day))
        for k, day in enumerate(DAYS)
    ] + [
        _simulated_events(10, 0.1, 0.1, seed=10 + k, day=day_start_ms(day), experiment="small")
        for k, day in enumerate(DAYS)
    ]
    events = pd.concat(frames, ignore_index=True).assign(project=DG_PROJECT)
    with open_offline_store(local) as store:
        store.ensure_tables(DG_PROJECT)
        store.insert_events(DG_PROJECT, events)
    days = daily_partitions("2026-11-01")
    outcomes = make_recommendation_outcomes(DG_PROJECT, features, days)
    readout_asset = make_experiment_readout(DG_PROJECT, features, days)
    plots = root / "plots"
    run_config = {"ops": {readout_asset.op.name: {"config": {"plot_dir": str(plots)}}}}
    for day in [*DAYS, DAYS[0]]:  # the last run re-materialises the first day
        result = dg.materialize(
            [outcomes, readout_asset],
            resources=make_resources(local),
            partition_key=day,
            run_config=run_config,
        )
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        harm, sample = checks[HARM_CHECK], checks[SAMPLE_CHECK]
        assert not harm.passed and harm.severity == dg.AssetCheckSeverity.WARN
        assert "ab/treatment" in str(harm.description)
        assert not sample.passed and sample.severity == dg.AssetCheckSeverity.WARN
        assert "small/control" in str(sample.description)
        assert "ab/" not in str(sample.description)
        (event,) = [
            e for e in result.get_asset_materialization_events() if e.asset_key == readout_asset.key
        ]
        meta = event.step_materialization_data.materialization.metadata
        assert "ab_mlflow_run" in meta, "the readout was not logged to MLflow"
        assert Path(str(meta["ab_plot_path"].value)).stat().st_size > 0
    assert (plots / "ab-shuffle1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open_offline_store(local) as store:
        outcomes_table = store.table(DG_PROJECT, OUTCOMES_TABLE)
        outcome_rows = store.query_df(
            f"SELECT partition, count() AS n FROM {outcomes_table}"
            " GROUP BY partition ORDER BY partition"
        )
        table = store.table(DG_PROJECT, READOUT_TABLE)
        stored = store.query_df(
            f"SELECT partition, scope, `group`, users, difference FROM {table} FINAL "
            "WHERE experiment = 'ab' AND metric = 'hit_rate' ORDER BY partition, scope, `group`"
        )
    assert sorted(set(stored["partition"])) == DAYS
    per_day = stored[stored["scope"] == "day"].set_index(["partition", "group"])
    for day in DAYS:
        assert per_day.loc[(day, "control"), "users"] == 800
        assert per_day.loc[(day, "treatment"), "difference"] < -0.05
    cumulative = stored[stored["scope"] == "cumulative"].set_index(["partition", "group"])
    assert cumulative.loc[(DAYS[0], "control"), "users"] == 800
    # Users come back on the second day: the cumulative readout counts them once.
    assert cumulative.loc[(DAYS[1], "control"), "users"] == 800
    assert len(stored) == 2 * 2 * 2  # days x scopes x groups, none added by the re-run
    # Each day's outcomes: 1600 users of "ab" and 10 of "small", 3 items each, once.
    assert outcome_rows.set_index("partition")["n"].to_dict() == {d: 1610 * 3 for d in DAYS}
