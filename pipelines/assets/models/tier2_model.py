"""Asset: a tier-two ranker (XGBoost → onnxmltools), parity-gated, evaluated with tier one."""

# No `from __future__ import annotations`: Dagster reads the annotations.
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from twotier.features.spec import ProjectFeatures
from twotier.models.candidates import candidate_rows_before
from twotier.models.datasets import read_group_set, read_tier_two_set
from twotier.models.evaluate import evaluate_two_tiers
from twotier.models.parity import PARITY_TOLERANCE
from twotier.models.plots import auc_by_round, feature_importance_figure, metric_curves_figure
from twotier.models.tier_one import TierOneParams
from twotier.models.tier_two import TierTwoParams, train_tier_two_frame
from twotier.naming import model_name
from twotier.pipelines.assets.keys import (
    EXPERIMENT_TRAINING_SETS,
    FEATURE_SNAPSHOTS,
    TIER_ONE,
    asset_key,
    group_name,
    tier_two,
    training_set_tier_two,
)
from twotier.pipelines.assets.models.gates import (
    auc_gate,
    gate_check,
    known_users_gate,
    parity_gate,
    recall_gate,
)
from twotier.pipelines.assets.models.run_logging import (
    Stopwatch,
    flat_params,
    log_figures,
    log_metrics,
    mlflow_model_url,
    mlflow_run_url,
    model_card,
    run_identity,
)
from twotier.pipelines.assets.outputs import RegisteredModel
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.assets.project import project_settings
from twotier.pipelines.resources import MLflowResource, OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL
from twotier.registry import register_onnx

PARITY_CHECK = "parity"
AUC_CHECK = "auc_floor"
POPULARITY_CHECK = "beats_popularity"
RECALL_CHECK = "recall_vs_popularity"


class TierTwoConfig(dg.Config):
    """Training, evaluation and gate settings of a tier-two ranker."""

    n_estimators: int = Field(60, ge=1, le=2000)
    max_depth: int = Field(4, ge=1, le=12)
    learning_rate: float = Field(0.15, gt=0, le=1)
    random_state: int = 0
    auc_floor: float = Field(0.55, ge=0, le=1, description="Lowest hold-out AUC to promote.")
    min_gain_over_popularity: float = Field(
        0.0,
        ge=0,
        description="On known users, NDCG@10 of the two tiers must exceed (1 + this) times "
        "both popularity baselines'.",
    )
    min_known_users: int = Field(
        30,
        ge=1,
        description="Known hold-out users below which beats_popularity is inconclusive (WARN).",
    )
    recent_popularity_days: float = Field(
        730.0, gt=0, description="Window of the recent-popularity baseline (days)."
    )
    parity_tolerance: float = Field(PARITY_TOLERANCE, gt=0, le=PARITY_TOLERANCE)
    eval_k: int = Field(100, ge=1, description="Tier-one candidates per hold-out user.")
    ndcg_k: int = Field(10, ge=1)
    eval_max_users: int | None = Field(1000, ge=1, description="Hold-out users evaluated.")
    training_rows: Literal["candidates", "views"] = Field(
        "candidates",
        description="candidates: rows are tier one's candidates at label cuts inside the "
        "training period, labelled by later smiles (twotier.models.candidates); views: the "
        "stored point-in-time rows of every view, labelled smile-or-not.",
    )
    train_group: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,62}\.[a-z][a-z0-9_]{0,62}$",
        description="'<experiment>.<group>': train on that A/B group's rows only, as the "
        "experiment_training_sets asset assigned them (the group each user was in at each "
        "row's time); e.g. a challenger trained on its own treatment group. None: everyone.",
    )
    label_cut_quantiles: list[float] = Field(
        [0.7, 0.8, 0.9],
        min_length=2,
        description="Label cuts as quantiles of the training views' times; the last cut's "
        "rows are the hold-out for AUC and parity (candidates rows only).",
    )


def _group_rows(
    store: Any,
    project: str,
    features: ProjectFeatures,
    spec: Any,
    rows: pd.DataFrame,
    config: TierTwoConfig,
) -> pd.DataFrame:
    """The training rows of ``config.train_group``'s users (views: that group's own rows).

    Raises:
        dg.Failure: The experiment or group is not declared.
    """
    experiment, group = str(config.train_group).split(".")
    declared = {e.name: [g.name for g in e.groups] for e in features.experiments}
    if group not in declared.get(experiment, []):
        raise dg.Failure(
            f"train_group {config.train_group!r}: {project!r} declares no such group "
            f"(declared: {declared or 'no experiments'})"
        )
    grouped = read_group_set(store, project, spec, experiment, group)
    if config.training_rows == "views":
        return grouped.drop(columns=["partition", "experiment", "shuffle", "group"])
    members = set(grouped["user_id"].astype(str))
    return rows[rows["user_id"].astype(str).isin(members)].reset_index(drop=True)


def make_tier_two_model(project: str, features: ProjectFeatures, model: str) -> dg.AssetsDefinition:
    """The ``tier2_<model>`` asset: a new version of ``<project>.tier2.<model>``.

    Trains XGBoost on tier one's candidates at label cuts before tier one's cut-off
    (``twotier.models.candidates``; or on the stored rows of every view), converts it
    with onnxmltools and refuses to register it when ONNX and XGBoost disagree beyond the
    tolerance. Both tiers together are then evaluated on the hold-out against popularity
    (``evaluate_two_tiers``); params, metrics, plots and the model-features spec go to one
    MLflow run, the two-tier metrics also to tier one's run, and the version is registered
    without moving any alias.
    """
    key = asset_key(project, tier_two(model))
    name = model_name(project, "tier2", model)
    spec = features.model_spec(model)
    settings = project_settings(project, features)

    @dg.asset(
        key=key,
        ins={"tier_one": dg.AssetIn(key=asset_key(project, TIER_ONE))},
        deps=[
            asset_key(project, training_set_tier_two(model)),
            asset_key(project, FEATURE_SNAPSHOTS),
            # The A/B group training sets: what `train_group` selects rows from.
            *([asset_key(project, EXPERIMENT_TRAINING_SETS)] if features.experiments else []),
        ],
        group_name=group_name(project, "models"),
        kinds={"xgboost", "onnx", "mlflow"},
        pool=OFFLINE_STORE_POOL,
        backfill_policy=SINGLE_RUN,
        check_specs=[
            dg.AssetCheckSpec(
                PARITY_CHECK,
                asset=key,
                blocking=True,
                description="ONNX probabilities match XGBoost within the tolerance (ERROR).",
            ),
            dg.AssetCheckSpec(
                AUC_CHECK,
                asset=key,
                blocking=True,
                description="The hold-out AUC reaches the configured floor (ERROR).",
            ),
            dg.AssetCheckSpec(
                POPULARITY_CHECK,
                asset=key,
                blocking=True,
                description="On known users, the two tiers beat all-time and recent popularity "
                "on NDCG@10 beyond the bootstrap interval (ERROR; WARN when too few users "
                "or an interval reaches 1x).",
            ),
            dg.AssetCheckSpec(
                RECALL_CHECK,
                asset=key,
                description="Tier one's candidates recall at least what popularity does (WARN).",
            ),
        ],
        description=f"XGBoost ranker {model!r} of {project!r} as ONNX with its features spec, "
        f"registered as a new version of {name} (no alias moved).",
    )
    def tier2_model(
        context: dg.AssetExecutionContext,
        config: TierTwoConfig,
        tier_one: RegisteredModel,
        offline_store: OfflineStoreResource,
        mlflow: MLflowResource,
    ) -> Iterator[dg.Output[RegisteredModel] | dg.AssetCheckResult]:
        cutoff = tier_one.cutoff_ts
        params = TierTwoParams(
            n_estimators=config.n_estimators,
            max_depth=config.max_depth,
            learning_rate=config.learning_rate,
            random_state=config.random_state,
        )
        watch = Stopwatch()
        with offline_store.open() as store:
            if config.training_rows == "views":
                rows = read_tier_two_set(store, project, spec)
                split = cutoff
            else:
                rows, split = candidate_rows_before(
                    store,
                    settings,
                    project,
                    spec,
                    cutoff,
                    config.label_cut_quantiles,
                    TierOneParams(fallback_window_days=config.recent_popularity_days),
                    progress=context.log.info,
                )
            if config.train_group:
                rows = _group_rows(store, project, features, spec, rows, config)
                context.log.info(
                    f"training on A/B group {config.train_group}: {len(rows)} rows of "
                    f"{rows['user_id'].nunique() if len(rows) else 0} users"
                )
            watch.lap("read")
            # Raises TierTwoError / ParityError before anything is registered.
            trained = train_tier_two_frame(rows, spec, split, params, config.parity_tolerance)
            watch.lap("train_export_onnx_parity")
            evaluation = evaluate_two_tiers(
                store,
                settings,
                project,
                tier_one.onnx_bytes,
                trained.onnx_model,
                cutoff,
                k=config.eval_k,
                ndcg_k=config.ndcg_k,
                max_users=config.eval_max_users,
                seed=config.random_state,
                recent_days=config.recent_popularity_days,
            )
        watch.lap("evaluate_two_tiers")
        holdout = rows[rows["ts"] >= split]
        rounds, round_auc = auc_by_round(
            trained.native,
            holdout[spec.columns()].to_numpy(dtype=np.float32),
            holdout["label"].to_numpy(),
        )
        metrics = {**trained.metrics, **evaluation}
        run_name, run_tags = run_identity(context, project, "tier2", model)
        card = model_card(
            f"{project} tier-two ranker {model!r} (XGBoost as ONNX, {len(spec.columns())} "
            f"input columns), on tier one v{tier_one.version}",
            (int(rows["ts"].min()), int(cutoff)),
            len(rows),
            metrics,
            [
                ("hold-out AUC", "auc"),
                ("NDCG@10, known users: two tiers", "two_tier_known_ndcg_at_10"),
                ("NDCG@10, known users: all-time popularity", "popularity_known_ndcg_at_10"),
                ("NDCG@10, known users: recent popularity", "recent_popularity_known_ndcg_at_10"),
                ("NDCG@10, all users: two tiers", "two_tier_ndcg_at_10"),
                ("known hold-out users", "eval_known_users"),
                ("ONNX vs XGBoost parity (max abs diff)", "parity_max_abs_diff"),
            ],
        )
        ref = register_onnx(
            trained.onnx_model,
            tracking_uri=mlflow.tracking_uri,
            name=name,
            feature_names=spec.columns(),
            experiment=project,
            params=flat_params(
                {
                    **trained.params,
                    "eval_k": config.eval_k,
                    "auc_floor": config.auc_floor,
                    "parity_tolerance": config.parity_tolerance,
                    "tier_one_version": tier_one.version,
                    "training_rows": config.training_rows,
                    "label_cut_quantiles": config.label_cut_quantiles,
                    "candidates_tier_one": spec.model.candidates.tier_one,
                    "candidates_popular": spec.model.candidates.popular,
                }
            ),
            metrics=metrics,
            alias=None,
            spec=spec,
            tags={
                "twotier.tier": "tier2",
                "twotier.cutoff_ts": str(cutoff),
                "twotier.tier1_version": tier_one.version,
            },
            run_name=run_name,
            run_tags=run_tags,
            description=card,
            metric_steps={
                "holdout_auc_by_round": [
                    (r, float(a)) for r, a in zip(rounds, round_auc, strict=True)
                ]
            },
        )
        run_id = ref.run_id or ""
        importance = trained.native.feature_importances_
        plots = log_figures(
            mlflow.tracking_uri,
            run_id,
            {
                "feature_importance": feature_importance_figure(spec.columns(), importance),
                "holdout_auc_by_round": metric_curves_figure(
                    "hold-out AUC", rounds, {model: round_auc}, xlabel="boosting rounds"
                ),
            },
        )
        # Tier one's run gets the metrics of the two tiers together too.
        log_metrics(
            mlflow.tracking_uri,
            tier_one.run_id,
            {f"{model}.{k}": v for k, v in evaluation.items()},
        )
        watch.lap("register_and_plots")
        parity = parity_gate(metrics["parity_max_abs_diff"], config.parity_tolerance)
        floor = auc_gate(metrics["auc"], config.auc_floor)
        popular = known_users_gate(
            evaluation, config.ndcg_k, config.min_known_users, config.min_gain_over_popularity
        )
        recall = recall_gate(evaluation, config.eval_k)
        context.log.info(
            f"registered {ref.model_id} (no alias moved): {floor[2]}; {popular.verdict}: "
            f"{popular.message}; {parity[2]}"
        )
        yield dg.Output(
            RegisteredModel(
                project=project,
                tier="tier2",
                model=model,
                name=name,
                version=ref.version,
                run_id=run_id,
                cutoff_ts=cutoff,
                metrics=metrics,
                checks={
                    PARITY_CHECK: parity[0],
                    AUC_CHECK: floor[0],
                    POPULARITY_CHECK: not popular.blocks,
                },
            ),
            metadata={
                "model_name": name,
                "version": ref.version,
                "run_id": run_id,
                "mlflow_run": dg.MetadataValue.url(mlflow_run_url(mlflow.tracking_uri, run_id)),
                "mlflow_model": dg.MetadataValue.url(
                    mlflow_model_url(mlflow.tracking_uri, name, ref.version)
                ),
                "tier_one_version": tier_one.version,
                "cutoff_ts": cutoff,
                "holdout_from": dg.MetadataValue.timestamp(cutoff / 1000),
                "training_rows_used": len(rows),
                "train_group": config.train_group or "everyone",
                "feature_columns": spec.columns(),
                "plots": plots,
                "seconds": dg.MetadataValue.json(watch.seconds),
                **{k: float(v) for k, v in metrics.items()},
            },
        )
        for check, gate, extra in (
            (PARITY_CHECK, parity, {"tolerance": config.parity_tolerance}),
            (AUC_CHECK, floor, {"floor": config.auc_floor}),
        ):
            yield gate_check(check, gate, dg.AssetCheckSeverity.ERROR, {"value": gate[1], **extra})
        yield dg.AssetCheckResult(
            check_name=POPULARITY_CHECK,
            passed=popular.verdict == "pass",
            severity=(
                dg.AssetCheckSeverity.ERROR if popular.blocks else dg.AssetCheckSeverity.WARN
            ),
            description=f"{popular.verdict}: {popular.message}",
            metadata={
                "verdict": popular.verdict,
                "value": popular.value,
                "known_users": evaluation.get("eval_known_users", 0.0),
                "min_known_users": config.min_known_users,
                "min_gain": config.min_gain_over_popularity,
            },
        )
        yield gate_check(RECALL_CHECK, recall, dg.AssetCheckSeverity.WARN, {"value": recall[1]})

    return tier2_model
