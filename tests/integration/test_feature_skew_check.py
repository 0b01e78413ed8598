"""The feature_skew asset and its check on a real embedded chdb with MovieLens snapshots.

Recommendation events carry ``features`` contexts built from the true point-in-time values
(as float32, the way serving logs them). One serve day logs them as they are: the check
passes. Another logs ``user_stats.views`` one too high: the check fails naming exactly that
feature. A day without samples only warns; re-materialising a day changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.feature_log import FEATURES_KEY, FEATURES_TS_KEY, encode_features
from twotier.feature_skew import SKEW_TABLE, read_skew
from twotier.features.offline import historical_features, materialize_all_snapshots
from twotier.offline_store import OfflineStore, events_frame, open_offline_store
from twotier.pipelines.assets.experiments.feature_skew import CHECK_NAME, make_feature_skew
from twotier.pipelines.assets.partitions import daily_partitions
from twotier.pipelines.resources import OfflineStoreResource
from twotier.readout import day_start_ms
from twotier.replay import movielens_events

PROJECT = "skew_proj"
RATINGS = 3000
CLEAN_DAY, SKEWED_DAY, EMPTY_DAY = "2026-12-01", "2026-12-02", "2026-12-03"
SKEWED = "user_stats.views"
ROWS_PER_DAY = 60
MODEL = f"{PROJECT}.tier2.ranker/3"


@pytest.fixture(scope="module")
def skew_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("feature-skew") / "offline"
    return with_offline_store(settings, data, {PROJECT: settings.project_features("movielens")})


def _logged_day(
    skew_settings: Settings, store: OfflineStore, pairs: pd.DataFrame, day: str, skew: float
) -> pd.DataFrame:
    """Recommendation events of ``day`` whose contexts hold the true PIT rows (+ ``skew``)."""
    spec = skew_settings.project_features(PROJECT).model_spec("ranker")
    ts = day_start_ms(day) + 3_600_000 + np.arange(len(pairs), dtype=np.int64) * 1000
    entity = pairs.assign(ts=ts)
    truth = historical_features(store, skew_settings, PROJECT, spec, entity)
    rows = truth[spec.columns()].to_numpy(dtype=np.float32, copy=True)
    rows[:, spec.columns().index(SKEWED)] += np.float32(skew)
    rows[:, spec.columns().index("request.tier1_score")] = 0.5  # not reproducible: skipped
    events = pd.DataFrame(
        {
            "project": PROJECT,
            "event_id": [f"rec-{day}-{k}" for k in range(len(pairs))],
            "user_id": pairs["user_id"].tolist(),
            "item_id": pairs["item_id"].tolist(),
            "action": "recommendation",
            "value": 1.0,
            "ts": ts,
            "context": [
                {
                    "request_id": f"{day}-{k}",
                    "tier2_model": MODEL,
                    "rank": "0",
                    FEATURES_KEY: encode_features(spec.columns(), rows[k].tolist()),
                    FEATURES_TS_KEY: str(int(ts[k])),
                }
                for k in range(len(pairs))
            ],
        }
    )
    # An unsampled recommendation (no features) is not read.
    plain = events.iloc[:1].assign(
        event_id=f"rec-{day}-plain", context=[{"request_id": "plain", "tier2_model": MODEL}]
    )
    events = pd.concat([events, plain], ignore_index=True)
    return events.assign(truth_views=[*truth[SKEWED].tolist(), 0.0])


@pytest.fixture(scope="module")
def loaded(skew_settings: Settings, movielens: Path) -> pd.DataFrame:
    frame = events_frame(movielens_events(PROJECT, movielens, limit=RATINGS))
    views = frame[frame["action"] == "view"]
    pairs = (
        views[["user_id", "item_id"]]
        .drop_duplicates()
        .sample(ROWS_PER_DAY, random_state=0)
        .reset_index(drop=True)
    )
    with open_offline_store(skew_settings) as store:
        store.ensure_tables(PROJECT)
        store.insert_events(PROJECT, frame)
        materialize_all_snapshots(store, skew_settings, PROJECT)
        logged = [
            _logged_day(skew_settings, store, pairs, CLEAN_DAY, 0.0),
            _logged_day(skew_settings, store, pairs, SKEWED_DAY, 1.0),
        ]
        recs = pd.concat(logged, ignore_index=True)
        store.insert_events(PROJECT, recs.drop(columns=["truth_views"]))
    # The true values are real point-in-time counts: a user's views before the day.
    per_user = views.groupby("user_id").size()
    clean = logged[0].iloc[:ROWS_PER_DAY]
    assert (clean["truth_views"] == clean["user_id"].map(per_user)).all()
    return recs


def _run(skew_settings: Settings, day: str) -> dg.ExecuteInProcessResult:
    features = skew_settings.project_features(PROJECT)
    assets = make_feature_skew(
        PROJECT, features, daily_partitions("2026-11-01"), max_mismatch_rate=0.05, min_rows=30
    )
    return dg.materialize(
        list(assets),
        resources={"offline_store": OfflineStoreResource.from_settings(skew_settings)},
        partition_key=day,
        raise_on_error=False,
    )


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    return evaluation


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event,) = result.get_asset_materialization_events()
    meta = event.step_materialization_data.materialization.metadata
    return {k: v.value for k, v in meta.items()}


def test_the_check_passes_on_true_rows_and_fails_naming_the_skewed_feature(
    skew_settings: Settings, loaded: pd.DataFrame
) -> None:
    clean = _run(skew_settings, CLEAN_DAY)
    assert clean.success
    passed = _check(clean)
    assert passed.passed, passed.description
    meta = _metadata(clean)
    assert meta["rows_sampled"] == meta["rows_compared"] == ROWS_PER_DAY
    skipped = meta["skipped_features"]
    assert isinstance(skipped, dict) and "request.tier1_score" in skipped
    rates = meta["mismatch_rates"]
    assert isinstance(rates, dict) and set(rates[MODEL].values()) == {0.0}
    assert "| model | feature |" in str(meta["worst_features"])

    skewed = _run(skew_settings, SKEWED_DAY)
    assert skewed.success  # a failed non-blocking check does not fail the run
    failed = _check(skewed)
    assert not failed.passed
    assert failed.severity == dg.AssetCheckSeverity.ERROR
    failing = failed.metadata["failing_features"].value
    assert failing == {SKEWED: 1.0}
    assert SKEWED in str(failed.description)
    rates = _metadata(skewed)["mismatch_rates"]
    assert isinstance(rates, dict)
    assert {f for f, r in rates[MODEL].items() if r > 0} == {SKEWED}

    with open_offline_store(skew_settings) as store:
        rows = read_skew(store, PROJECT, [CLEAN_DAY, SKEWED_DAY])
        stored = int(
            store.query_df(f"SELECT count() AS n FROM {store.table(PROJECT, SKEW_TABLE)}")[
                "n"
            ].iloc[0]
        )
    views = rows[rows["feature"] == SKEWED].set_index("day")
    assert views.loc[SKEWED_DAY, "mismatched"] == ROWS_PER_DAY
    assert views.loc[SKEWED_DAY, "mean_abs_diff"] == pytest.approx(1.0)
    assert views.loc[CLEAN_DAY, "mismatched"] == 0
    assert stored == len(rows)

    # Re-materialising a day replaces its partition: the same rows, no more.
    again = _run(skew_settings, SKEWED_DAY)
    assert not _check(again).passed
    with open_offline_store(skew_settings) as store:
        rerun = read_skew(store, PROJECT, [CLEAN_DAY, SKEWED_DAY])
        table = store.table(PROJECT, SKEW_TABLE)
        total = int(store.query_df(f"SELECT count() AS n FROM {table}")["n"].iloc[0])
    assert total == stored
    columns = ["day", "model", "feature", "compared", "mismatched", "mismatch_rate"]
    pd.testing.assert_frame_equal(rerun[columns], rows[columns])


def test_a_day_without_samples_only_warns(skew_settings: Settings, loaded: pd.DataFrame) -> None:
    result = _run(skew_settings, EMPTY_DAY)
    assert result.success
    evaluation = _check(result)
    assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "too few sampled rows to judge" in str(evaluation.description)
