"""Pure helpers of the asset graph: gates, partitions, cut-offs, promotion aliases, keys."""

from __future__ import annotations

import re
from typing import Any

import dagster as dg
import numpy as np
import pytest

from twotier.config import load_settings
from twotier.experiments import Experiment, ExperimentGroup
from twotier.features.builtin import builtin_projects
from twotier.models.datasets import (
    TrainingSetError,
    holdout_cutoff,
    partition_labels,
    spec_layout,
)
from twotier.models.plots import feature_importance_figure, png_bytes, recall_curve
from twotier.pipelines.assets import make_project_assets
from twotier.pipelines.assets.ingest.events_checks import known_actions
from twotier.pipelines.assets.models.gates import (
    auc_gate,
    beats_popularity_gate,
    known_users_gate,
    parity_gate,
    recall_gate,
)
from twotier.pipelines.assets.partitions import (
    partitions_covering,
    training_partitions,
    windows_ms,
)
from twotier.pipelines.assets.promotion.promotion import group_aliases
from twotier.pipelines.resources import make_resources
from twotier.pipelines.resources.serving import ServingResource

MOVIELENS = builtin_projects()["movielens"]
EXPERIMENT = Experiment(
    name="ranker_ab",
    salt="s",
    groups=(
        ExperimentGroup(name="control", share=0.5, alias="champion"),
        ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
    ),
)


def test_gates_pass_and_fail_at_their_thresholds() -> None:
    assert auc_gate(0.7, 0.55)[0] and not auc_gate(0.7, 0.999)[0]
    assert auc_gate(0.55, 0.55)[0]  # the floor itself is enough
    assert parity_gate(1e-5, 1e-4)[0] and not parity_gate(2e-4, 1e-4)[0]
    metrics = {
        "two_tier_ndcg_at_10": 0.05,
        "popularity_ndcg_at_10": 0.04,
        "two_tier_recall_at_100": 0.2,
        "popularity_recall_at_100": 0.25,
    }
    passed, gain, message = beats_popularity_gate(metrics, "two_tier", 100, 10, 0.0)
    assert passed and gain == pytest.approx(0.01) and "NDCG@10" in message
    assert not beats_popularity_gate(metrics, "two_tier", 100, 10, 0.02)[0]
    with pytest.raises(KeyError, match="two_tier_recall_at_50"):
        beats_popularity_gate(metrics, "two_tier", 50, 10, 0.0)


def _known(ratio: float, low: float, recent: float, recent_low: float, users: int = 100) -> dict:
    out = {"eval_known_users": float(users)}
    for name, r, lo in (("popularity", ratio, low), ("recent_popularity", recent, recent_low)):
        key = f"two_tier_known_ndcg_ratio_vs_{name}"
        out |= {key: r, f"{key}_ci_low": lo, f"{key}_ci_high": r + (r - lo)}
    return out


def test_known_users_gate_passes_fails_and_says_when_it_cannot_decide() -> None:
    passed = known_users_gate(_known(1.6, 1.2, 1.2, 1.05), 10, 30)
    assert passed.verdict == "pass" and not passed.blocks
    assert "1.60x popularity [1.20, 2.00]" in passed.message
    # Better than all-time popularity, worse than recent popularity: a failure that blocks.
    lost = known_users_gate(_known(1.6, 1.2, 0.9, 0.7), 10, 30)
    assert lost.verdict == "fail" and lost.blocks and lost.value == pytest.approx(0.9)
    # Better on the point, but resampling users reaches no gain: inconclusive (WARN).
    wide = known_users_gate(_known(1.3, 0.95, 1.2, 1.01), 10, 30)
    assert wide.verdict == "inconclusive" and not wide.blocks and "reaches 1x" in wide.message
    # Too few known users: inconclusive whatever the numbers, and it says how many.
    few = known_users_gate(_known(3.0, 2.0, 3.0, 2.0, users=9), 10, 30)
    assert few.verdict == "inconclusive" and "only 9 known hold-out users" in few.message
    # A required margin.
    assert known_users_gate(_known(1.6, 1.2, 1.2, 1.05), 10, 30, min_gain=0.5).blocks
    with pytest.raises(KeyError, match="two_tier_known_ndcg_ratio_vs_popularity"):
        known_users_gate({"eval_known_users": 50.0}, 10, 30)


def test_recall_gate_compares_with_popularity() -> None:
    metrics = {"two_tier_recall_at_100": 0.3, "popularity_recall_at_100": 0.25}
    assert recall_gate(metrics, 100)[0] and "+0.0500" in recall_gate(metrics, 100)[2]
    assert not recall_gate({**metrics, "popularity_recall_at_100": 0.4}, 100)[0]


def test_monthly_partitions_and_their_windows() -> None:
    partitions = training_partitions("1996-01-01")
    keys = partitions.get_partition_keys()
    assert keys[:3] == ["1996-01-01", "1996-02-01", "1996-03-01"]
    [(key, start, end)] = windows_ms(partitions, ["1996-02-01"])
    assert key == "1996-02-01" and start == 823132800000 and end == 825638400000
    assert partitions_covering(partitions, start + 1, end) == ("1996-02-01", "1996-03-01")
    assert partitions_covering(partitions, 0, start)[0] == "1996-01-01"  # before: the first


def test_partition_labels_put_each_time_in_its_window() -> None:
    windows = [("a", 0, 10), ("b", 10, 20)]
    assert partition_labels(np.array([0, 9, 10, 19]), windows).tolist() == ["a", "a", "b", "b"]
    with pytest.raises(TrainingSetError, match="ts=20 lies outside"):
        partition_labels(np.array([5, 20]), windows)
    with pytest.raises(TrainingSetError, match="no partition windows"):
        partition_labels(np.array([5]), [])


def test_holdout_cutoff_keeps_both_sides() -> None:
    ts = np.arange(100)
    cutoff = holdout_cutoff(ts, 0.2)
    assert cutoff == 79 and (ts >= cutoff).sum() == 21
    with pytest.raises(TrainingSetError, match="empty"):
        holdout_cutoff(np.array([], dtype=np.int64), 0.2)
    with pytest.raises(TrainingSetError, match="every row is at or after"):
        holdout_cutoff(np.full(10, 5), 0.2)
    with pytest.raises(TrainingSetError, match="strictly between"):
        holdout_cutoff(ts, 1.0)


def test_spec_layout_changes_with_the_columns() -> None:
    spec = MOVIELENS.model_spec("ranker")
    assert spec_layout(spec) == spec_layout(MOVIELENS.model_spec("ranker"))
    other = builtin_projects()["memes"].model_spec("ranker")
    assert spec_layout(spec) != spec_layout(other)


def test_group_aliases_of_declared_experiments_only() -> None:
    features = MOVIELENS.model_copy(update={"experiments": (EXPERIMENT,)})
    assert group_aliases(features, []) == []
    assert group_aliases(features, ["ranker_ab.treatment"]) == ["challenger"]
    assert group_aliases(features, ["ranker_ab"]) == ["champion", "challenger"]
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        group_aliases(features, ["nope"])
    with pytest.raises(ValueError, match="has no group 'x'"):
        group_aliases(features, ["ranker_ab.x"])


def test_known_actions_include_counted_and_extra_ones() -> None:
    actions = known_actions(MOVIELENS, ["purchase"])
    assert {"view", "smile", "dislike", "purchase"} <= set(actions)
    assert actions == sorted(actions)


def test_plots_render_png_and_recall_curve_grows() -> None:
    figure = feature_importance_figure(["a", "b"], [0.2, 0.8])
    assert png_bytes(figure)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 feature names but 1 importances"):
        feature_importance_figure(["a", "b"], [1.0])
    curve = recall_curve({"u": ["x", "y", "z"]}, {"u": {"y", "z"}}, [1, 2, 3])
    assert curve == [0.0, 0.5, 1.0]


def test_project_graph_keys_checks_and_pools() -> None:
    features = MOVIELENS.model_copy(update={"experiments": (EXPERIMENT,)})
    assets = make_project_assets("movielens", features)
    defs = dg.Definitions(assets=assets, resources=make_resources(load_settings()))
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {
        f"movielens/{name}"
        for name in (
            "events_offline",
            "items_offline",
            "feature_snapshots",
            "training_set_tier1",
            "training_set_tier2_ranker",
            "experiment_training_sets",
            "tier1_candidates",
            "tier2_ranker",
            "promotion",
            "recommendation_outcomes",
            "experiment_readout",
            "feature_skew",
        )
    }
    graph = defs.resolve_asset_graph()
    blocking = {
        k.to_user_string() for k in graph.asset_check_keys if graph.get_check_spec(k).blocking
    }
    assert {
        "movielens/tier2_ranker:auc_floor",
        "movielens/tier2_ranker:beats_popularity",
        "movielens/tier2_ranker:parity",
        "movielens/tier1_candidates:parity",
        "movielens/events_offline:events_ts_range",
    } <= blocking
    snapshots = defs.resolve_assets_def(dg.AssetKey(["movielens", "feature_snapshots"]))
    assert snapshots.asset_deps[snapshots.key] == {
        dg.AssetKey(["movielens", "events_offline"]),
        dg.AssetKey(["movielens", "items_offline"]),
    }
    promotion = defs.resolve_assets_def(dg.AssetKey(["movielens", "promotion"]))
    assert promotion.asset_deps[promotion.key] == {
        dg.AssetKey(["movielens", "tier1_candidates"]),
        dg.AssetKey(["movielens", "tier2_ranker"]),
    }
    for asset in assets:
        if "offline_store" in asset.required_resource_keys:
            assert asset.op.pool == "offline_store", asset
    plain = make_project_assets(  # no experiments: no group sets, outcomes or readout
        "movielens", MOVIELENS.model_copy(update={"experiments": ()})
    )
    assert len(plain) == len(assets) - 3
    with pytest.raises(ValueError, match="invalid project name"):
        make_project_assets("Bad-Name", MOVIELENS)


def test_serving_resource_follows_settings() -> None:
    settings = load_settings()
    resource = ServingResource.from_settings(settings)
    assert resource.url == settings.serving.url(settings.ray)
    assert resource.admin_token == settings.serving.admin_token.get_secret_value()
    assert resource.deploy_after_promotion is settings.pipelines.deploy_after_promotion


def test_materialize_run_config_adds_in_process_execution() -> None:
    from twotier.pipelines.cli import IN_PROCESS, run_config

    quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    assert run_config(None, True) == {**IN_PROCESS, **quiet}
    assert run_config(None, False) == quiet
    assert run_config(None, False, "DEBUG")["loggers"]["console"]["config"]["log_level"] == "DEBUG"
    # Dagster accepts it: its default console logger takes the level.
    import dagster as dg

    @dg.asset
    def one() -> int:
        return 1

    assert dg.materialize([one], run_config=quiet).success
    ops = '{"ops": {"movielens__tier2_ranker": {"config": {"auc_floor": 0.6}}}}'
    assert run_config(ops, True)["ops"]["movielens__tier2_ranker"]["config"]["auc_floor"] == 0.6
    with pytest.raises(ValueError, match="not valid JSON"):
        run_config("{nope", True)
    with pytest.raises(ValueError, match="must be a JSON object"):
        run_config("[1]", True)


def test_each_partition_of_a_single_run_gets_its_own_figures() -> None:
    from twotier.pipelines.assets.partitions import observe_partitions, windows_ms

    parts = dg.MonthlyPartitionsDefinition(start_date="2020-01-01", end_date="2020-04-01")

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
    def monthly(context) -> dg.MaterializeResult:  # unannotated: Dagster reads the hint
        windows = windows_ms(parts, context.partition_keys)
        observe_partitions(context, windows, {"2020-01-01": 5, "2020-02-01": 7})
        return dg.MaterializeResult(metadata={"rows": 12})

    tags = {
        "dagster/asset_partition_range_start": "2020-01-01",
        "dagster/asset_partition_range_end": "2020-03-01",
    }
    result = dg.materialize([monthly], tags=tags)
    observations: list[Any] = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    seen = {o.partition: {k: v.value for k, v in o.metadata.items()} for o in observations}
    assert seen == {
        "2020-01-01": {"rows": 5, "from": "2020-01-01", "until": "2020-02-01"},
        "2020-02-01": {"rows": 7, "from": "2020-02-01", "until": "2020-03-01"},
        "2020-03-01": {"rows": 0, "from": "2020-03-01", "until": "2020-04-01"},
    }


def test_default_range_is_months_or_days_and_never_both() -> None:
    from twotier.pipelines.materialize import all_partitions, default_range

    assert default_range(["feature_snapshots"], "2018-01-01") == all_partitions("2018-01-01")
    first, last = default_range(["experiment_readout", "feature_skew"], readout_start="2026-11-01")
    assert first == "2026-11-01" and last >= "2026-12-01"
    with pytest.raises(ValueError, match="materialise them in separate runs"):
        default_range(["experiment_readout", "promotion"])


def test_dagster_console_lines_are_compacted_to_time_step_and_message(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from twotier.pipelines.cli import compact_log_line, run_config

    @dg.asset
    def counted(context) -> int:  # unannotated: Dagster reads the hint
        context.log.info("read 33580 events - all new, " + "and a long tail " * 6)
        return 1

    assert dg.materialize([counted], run_config=run_config(None, False)).success
    logged = [line for line in capfd.readouterr().err.splitlines() if "read 33580" in line]
    assert logged, "Dagster's console logger printed nothing at INFO"
    compact = compact_log_line(logged[0], width=80).splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d counted: read 33580 events - all new, .*", compact[0])
    assert all(len(line) <= 80 for line in compact) and len(compact) > 1
    assert all(line.startswith(" " * 9) for line in compact[1:])
    # Anything else (MLflow's run links, tracebacks) passes through as it is.
    assert compact_log_line("Traceback (most recent call last):\n") == (
        "Traceback (most recent call last):"
    )
