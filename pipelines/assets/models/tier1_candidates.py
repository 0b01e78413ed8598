"""Asset: tier one (implicit ALS → ONNX top-k), parity-gated and registered without an alias."""

# No `from __future__ import annotations`: Dagster reads the annotations.
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from twotier.models.datasets import holdout_cutoff, read_tier_one_set
from twotier.models.evaluate import evaluate_tier_one
from twotier.models.parity import PARITY_TOLERANCE
from twotier.models.plots import metric_curves_figure
from twotier.models.tier_one import (
    TierOneParams,
    check_tier_one_parity,
    export_tier_one,
    train_tier_one,
)
from twotier.naming import model_name
from twotier.pipelines.assets.keys import (
    TIER_ONE,
    TIER_ONE_MODEL,
    TRAINING_SET_TIER_ONE,
    asset_key,
    group_name,
)
from twotier.pipelines.assets.models.gates import beats_popularity_gate, gate_check, parity_gate
from twotier.pipelines.assets.models.run_logging import (
    Stopwatch,
    flat_params,
    log_figures,
    mlflow_model_url,
    mlflow_run_url,
    model_card,
    run_identity,
)
from twotier.pipelines.assets.outputs import RegisteredModel
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import MLflowResource, OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL
from twotier.registry import register_onnx

PARITY_CHECK = "parity"
POPULARITY_CHECK = "beats_popularity"
CURVE_KS = (1, 5, 10, 20, 50, 100)


class TierOneConfig(dg.Config):
    """Training, split and gate settings of tier one."""

    factors: int = Field(16, ge=1, le=512)
    iterations: int = Field(8, ge=1, le=100)
    regularization: float = Field(1.0, gt=0)
    alpha: float = Field(5.0, gt=0)
    top_k: int = Field(100, ge=1, description="Candidates the ONNX graph returns by default.")
    fallback_window_days: float | None = Field(
        730.0, gt=0, description="Cold users get the popularity of this many last days."
    )
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Latest share of views held out.")
    parity_tolerance: float = Field(PARITY_TOLERANCE, gt=0, le=PARITY_TOLERANCE)
    parity_users: int = Field(500, ge=1, description="Hold-out users the parity gate scores.")
    eval_max_users: int | None = Field(1000, ge=1, description="Hold-out users evaluated.")


def make_tier_one_model(project: str) -> dg.AssetsDefinition:
    """The ``tier1_candidates`` asset: a new version of ``<project>.tier1.candidates``.

    Trains on the stored views before the hold-out cut-off, exports the ONNX top-k graph,
    refuses to register it when ONNX and numpy disagree by more than the tolerance, logs
    params, hold-out metrics against popularity and the Recall@k curve to one MLflow run,
    and registers the version without moving any alias (promotion does that).
    """
    key = asset_key(project, TIER_ONE)
    name = model_name(project, "tier1", TIER_ONE_MODEL)

    @dg.asset(
        key=key,
        deps=[asset_key(project, TRAINING_SET_TIER_ONE)],
        group_name=group_name(project, "models"),
        kinds={"numpy", "onnx", "mlflow"},
        pool=OFFLINE_STORE_POOL,
        backfill_policy=SINGLE_RUN,
        check_specs=[
            dg.AssetCheckSpec(
                PARITY_CHECK,
                asset=key,
                blocking=True,
                description="ONNX top-k scores match numpy within the tolerance (ERROR).",
            ),
            dg.AssetCheckSpec(
                POPULARITY_CHECK,
                asset=key,
                description="Tier one alone beats popularity on new hold-out views (WARN).",
            ),
        ],
        description=f"Implicit-ALS candidates of {project!r} as an ONNX top-k graph, "
        f"registered as a new version of {name} (no alias moved).",
    )
    def tier1_candidates(
        context: dg.AssetExecutionContext,
        config: TierOneConfig,
        offline_store: OfflineStoreResource,
        mlflow: MLflowResource,
    ) -> Iterator[dg.Output[RegisteredModel] | dg.AssetCheckResult]:
        watch = Stopwatch()
        with offline_store.open() as store:
            views = read_tier_one_set(store, project)
        watch.lap("read")
        cutoff = holdout_cutoff(views["ts"], config.test_fraction)
        train = views[views["ts"] < cutoff]
        holdout = views[views["ts"] >= cutoff]
        params = TierOneParams(
            factors=config.factors,
            iterations=config.iterations,
            regularization=config.regularization,
            alpha=config.alpha,
            top_k=config.top_k,
            fallback_window_days=config.fallback_window_days,
            seed=config.seed,
        )
        model = train_tier_one(train, params)
        watch.lap("train")
        graph = export_tier_one(model)
        watch.lap("export_onnx")
        users = sorted(set(holdout["user_id"]))[: config.parity_users]
        # Raises ParityError (the asset fails, nothing is registered) beyond the tolerance.
        gap = check_tier_one_parity(model, graph, users, config.parity_tolerance)
        watch.lap("parity")
        ks = sorted({k for k in CURVE_KS if k <= config.top_k} | {config.top_k})
        evaluation, curves = evaluate_tier_one(
            graph, train, holdout, ks=ks, max_users=config.eval_max_users, seed=config.seed
        )
        watch.lap("evaluate")
        metrics = {
            **evaluation,
            "parity_max_abs_diff": gap,
            "train_rows": float(len(train)),
            "holdout_rows": float(len(holdout)),
            "users": float(len(model.user_ids)),
            "items": float(len(model.item_ids)),
        }
        onnx_bytes = graph.SerializeToString()  # before mlflow moves weights to external data
        run_name, run_tags = run_identity(context, project, "tier1", "candidates")
        card = model_card(
            f"{project} tier-one candidates (implicit ALS as an ONNX top-k graph)",
            (int(train["ts"].min()), int(cutoff)),
            len(train),
            metrics,
            [
                ("NDCG@10: tier one", "tier_one_ndcg_at_10"),
                ("NDCG@10: popularity", "popularity_ndcg_at_10"),
                ("Recall@100: tier one", "tier_one_recall_at_100"),
                ("Recall@100: popularity", "popularity_recall_at_100"),
                ("users known to tier one", "users"),
                ("ONNX vs numpy parity (max abs diff)", "parity_max_abs_diff"),
            ],
        )
        ref = register_onnx(
            graph,
            tracking_uri=mlflow.tracking_uri,
            name=name,
            feature_names=[],
            experiment=project,
            params=flat_params(
                {
                    **params.model_dump(),
                    "model": "implicit_als",
                    "cutoff_ts": cutoff,
                    "test_fraction": config.test_fraction,
                    "parity_tolerance": config.parity_tolerance,
                }
            ),
            metrics=metrics,
            alias=None,
            spec=None,
            tags={"twotier.tier": "tier1", "twotier.cutoff_ts": str(cutoff)},
            run_name=run_name,
            run_tags=run_tags,
            description=card,
        )
        run_id = ref.run_id or ""
        plots = log_figures(
            mlflow.tracking_uri,
            run_id,
            {
                "tier1_recall_at_k": metric_curves_figure(
                    "Recall@k (new hold-out views)", ks, curves
                )
            },
        )
        watch.lap("register")
        parity = parity_gate(gap, config.parity_tolerance)
        popular = beats_popularity_gate(evaluation, "tier_one", config.top_k, 10, 0.0)
        context.log.info(
            f"registered {ref.model_id} (no alias moved): parity gap {gap:.1e}; {popular[2]}"
        )
        yield dg.Output(
            RegisteredModel(
                project=project,
                tier="tier1",
                model=TIER_ONE_MODEL,
                name=name,
                version=ref.version,
                run_id=run_id,
                cutoff_ts=cutoff,
                metrics=metrics,
                checks={PARITY_CHECK: parity[0]},
                onnx_bytes=onnx_bytes,
            ),
            metadata={
                "model_name": name,
                "version": ref.version,
                "run_id": run_id,
                "mlflow_run": dg.MetadataValue.url(mlflow_run_url(mlflow.tracking_uri, run_id)),
                "mlflow_model": dg.MetadataValue.url(
                    mlflow_model_url(mlflow.tracking_uri, name, ref.version)
                ),
                "cutoff_ts": cutoff,
                "holdout_from": dg.MetadataValue.timestamp(cutoff / 1000),
                "plots": plots,
                "seconds": dg.MetadataValue.json(watch.seconds),
                **{k: float(v) for k, v in metrics.items()},
            },
        )
        yield gate_check(
            PARITY_CHECK,
            parity,
            dg.AssetCheckSeverity.ERROR,
            {"max_abs_diff": parity[1], "tolerance": config.parity_tolerance},
        )
        yield gate_check(
            POPULARITY_CHECK, popular, dg.AssetCheckSeverity.WARN, {"best_gain": popular[1]}
        )

    return tier1_candidates
