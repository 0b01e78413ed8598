"""Asset: a tier-two model's point-in-time training set, partitioned by month of the view."""

# No `from __future__ import annotations`: Dagster reads the annotations.
import dagster as dg
from pydantic import Field

from twotier.features.offline import training_set
from twotier.features.spec import ProjectFeatures
from twotier.models.datasets import tier_two_table, write_tier_two_set
from twotier.naming import offline_table
from twotier.pipelines.assets.keys import (
    FEATURE_SNAPSHOTS,
    asset_key,
    group_name,
    training_set_tier_two,
)
from twotier.pipelines.assets.partitions import SINGLE_RUN, observe_partitions, windows_ms
from twotier.pipelines.assets.project import project_settings
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL


class TrainingSetConfig(dg.Config):
    """How rows and labels are made."""

    label_action: str = Field("smile", description="The action that makes a view positive.")
    example_action: str = Field("view", description="The action whose events are the rows.")


def make_training_set_tier_two(
    project: str,
    features: ProjectFeatures,
    model: str,
    partitions_def: dg.TimeWindowPartitionsDefinition,
) -> dg.AssetsDefinition:
    """The ``training_set_tier2_<model>`` asset.

    One row per view in the partition's month, with the model's features as they were
    strictly before the view (ASOF join on the feature snapshots) and the label whether
    the user smiled at the item (``twotier.features.training_set``).
    """
    spec = features.model_spec(model)
    settings = project_settings(project, features)

    @dg.asset(
        key=asset_key(project, training_set_tier_two(model)),
        deps=[asset_key(project, FEATURE_SNAPSHOTS)],
        partitions_def=partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "training_sets"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        description=f"Point-in-time training rows of tier-two model {model!r} per month, in "
        f"{offline_table(project, tier_two_table(model))}.",
    )
    def training_set_tier2(
        context: dg.AssetExecutionContext,
        config: TrainingSetConfig,
        offline_store: OfflineStoreResource,
    ) -> dg.MaterializeResult:
        windows = windows_ms(partitions_def, context.partition_keys)
        with offline_store.open() as store:
            rows = training_set(
                store,
                settings,
                project,
                spec,
                label_action=config.label_action,
                example_action=config.example_action,
                since_ts=windows[0][1],
                until_ts=windows[-1][2],
            )
            counts = write_tier_two_set(store, project, spec, rows, windows)
        filled = {k: n for k, n in counts.items() if n}
        observe_partitions(context, windows, counts)
        positive = float(rows["label"].mean()) if len(rows) else 0.0
        context.log.info(
            f"tier-two training set {model}: {len(rows)} rows ({positive:.1%} positive) in "
            f"{len(filled)} of {len(counts)} partitions"
        )
        return dg.MaterializeResult(
            metadata={
                "rows": len(rows),
                "positive_rate": positive,
                "partitions": len(counts),
                "partitions_with_rows": len(filled),
                "rows_by_partition": dg.MetadataValue.json(filled),
                "columns": spec.columns(),
            }
        )

    return training_set_tier2
