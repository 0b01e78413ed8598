"""Asset: tier-two training rows split by A/B group, under the shuffle that held at each row's time.

Each declared experiment's current shuffle generation is recorded in the offline store
(``experiments.record_shuffle``, idempotent: the first time a generation is seen is its
start); each row then gets the generation in force at its own time
(``experiments.shuffles_at``) and the group the user had in it (``assign_many``). A
reshuffle therefore moves only the rows after it.
"""

# No `from __future__ import annotations`: Dagster reads the annotations.
import time

import dagster as dg
import pandas as pd

from twotier.experiments import (
    assign_many,
    record_shuffle,
    shuffle_history,
    shuffles_at,
    utc_time,
)
from twotier.features.spec import ProjectFeatures
from twotier.models.datasets import read_tier_two_set, write_group_sets
from twotier.pipelines.assets.keys import (
    EXPERIMENT_TRAINING_SETS,
    asset_key,
    group_name,
    tier_two_models,
    training_set_tier_two,
)
from twotier.pipelines.assets.partitions import SINGLE_RUN, windows_ms
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL


def make_experiment_training_sets(
    project: str, features: ProjectFeatures, partitions_def: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``experiment_training_sets`` asset (only for projects that declare experiments)."""
    models = tier_two_models(features)
    experiments = list(features.experiments)

    @dg.asset(
        key=asset_key(project, EXPERIMENT_TRAINING_SETS),
        deps=[asset_key(project, training_set_tier_two(m)) for m in models],
        partitions_def=partitions_def,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "training_sets"),
        kinds={"clickhouse"},
        pool=OFFLINE_STORE_POOL,
        description=f"Tier-two training rows of {project!r} per A/B group of experiments "
        f"{[e.name for e in experiments]}, by the shuffle that held at each row's time.",
    )
    def experiment_training_sets(
        context: dg.AssetExecutionContext, offline_store: OfflineStoreResource
    ) -> dg.MaterializeResult:
        keys = context.partition_keys
        windows = windows_ms(partitions_def, keys)
        now_ms = time.time_ns() // 1_000_000
        rows_by_group: dict[str, int] = {}
        generations: dict[str, list[int]] = {}
        with offline_store.open() as store:
            for experiment in experiments:
                if record_shuffle(store, project, experiment, started_ts=now_ms):
                    context.log.info(
                        f"experiment {experiment.name}: shuffle {experiment.shuffle} recorded "
                        f"as starting now ({utc_time(now_ms)})"
                    )
            histories = {e.name: shuffle_history(store, project, e.name) for e in experiments}
            for model in models:
                spec = features.model_spec(model)
                rows = read_tier_two_set(store, project, spec, keys)
                parts = []
                for experiment in experiments:
                    shuffles = shuffles_at(histories[experiment.name], rows["ts"].tolist())
                    groups = assign_many(project, experiment, rows["user_id"].tolist(), shuffles)
                    part = rows.assign(experiment=experiment.name, shuffle=shuffles, group=groups)
                    parts.append(part)
                    for group, n in part["group"].value_counts().items():
                        label = f"{model}/{experiment.name}/{group}"
                        rows_by_group[label] = rows_by_group.get(label, 0) + int(n)
                    generations[experiment.name] = sorted(set(shuffles))
                split = pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0]
                write_group_sets(store, project, spec, split, windows)
        context.log.info(f"A/B training rows by group: {rows_by_group}")
        return dg.MaterializeResult(
            metadata={
                "rows_by_group": dg.MetadataValue.json(rows_by_group),
                "shuffles_used": dg.MetadataValue.json(generations),
                "partitions": len(keys),
            }
        )

    return experiment_training_sets
