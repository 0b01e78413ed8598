"""Asset: the tier-two ranker trained on the offline events, registered as ``champion``."""

# No `from __future__ import annotations`: Dagster reads the context and resource
# annotations at definition time.
import dagster as dg

from twotier.naming import asset_prefix, model_name
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.resources import MLflowResource, OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL
from twotier.training import train_ranker

ASSET_NAME = "ranker_model"
ALIAS = "champion"
AUC_CHECK = "auc_above_chance"
SAMPLE_ROWS = 20
"""Hold-out rows whose features and ONNX probabilities go into the metadata."""


def ranker_model_key(project: str) -> dg.AssetKey:
    """The asset key ``<project>/ranker_model``."""
    return dg.AssetKey([*asset_prefix(project), ASSET_NAME])


def make_ranker_model(project: str) -> dg.AssetsDefinition:
    """The ``ranker_model`` asset of ``project``, with a blocking check that AUC > 0.5.

    It trains ``twotier.training.train_ranker`` on the project's offline events,
    registers the parity-checked ONNX graph as a new version of
    ``<project>.tier2.ranker`` in the experiment ``<project>``, and points the
    ``champion`` alias at it.
    """
    key = ranker_model_key(project)
    name = model_name(project, "tier2", "ranker")

    @dg.asset(
        key=key,
        deps=[events_offline_key(project)],
        group_name=f"{project}_skeleton",
        kinds={"xgboost", "onnx", "mlflow"},
        pool=OFFLINE_STORE_POOL,
        check_specs=[
            dg.AssetCheckSpec(
                AUC_CHECK,
                asset=key,
                blocking=True,
                description="The hold-out AUC beats chance (> 0.5).",
            )
        ],
        description=f"XGBoost ranker of {project!r} as ONNX, registered as {name}@{ALIAS}.",
    )
    def ranker_model(
        context: dg.AssetExecutionContext,
        offline_store: OfflineStoreResource,
        mlflow: MLflowResource,
    ) -> dg.MaterializeResult:
        with offline_store.open() as store:
            trained = train_ranker(store, project)
        ref = mlflow.register_onnx(
            trained.onnx_model,
            name=name,
            feature_names=trained.feature_names,
            experiment=project,
            params=trained.params,
            metrics=trained.metrics,
            alias=ALIAS,
        )
        auc = trained.metrics["auc"]
        context.log.info(f"registered {ref.model_id} as {name}@{ALIAS} (hold-out AUC {auc:.4f})")
        sample = trained.holdout.head(SAMPLE_ROWS)
        return dg.MaterializeResult(
            metadata={
                "model_name": name,
                "version": ref.version,
                "model_id": ref.model_id,
                "run_id": ref.run_id or "",
                "auc": auc,
                "train_rows": int(trained.metrics["train_rows"]),
                "test_rows": int(trained.metrics["test_rows"]),
                "parity_max_abs_diff": trained.metrics["parity_max_abs_diff"],
                "feature_names": trained.feature_names,
                "holdout_sample": dg.MetadataValue.json(
                    {
                        "event_id": sample["event_id"].tolist(),
                        "features": sample[trained.feature_names].astype(float).values.tolist(),
                        "probability": sample["probability"].astype(float).tolist(),
                    }
                ),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=AUC_CHECK,
                    passed=auc > 0.5,
                    metadata={"auc": auc},
                    description=f"hold-out AUC {auc:.4f} (needs > 0.5)",
                )
            ],
        )

    return ranker_model
