"""Materialise a project's skeleton assets in this process, against the stack of ``settings``.

For scripts and tests; ``twotier materialize`` runs the same assets through the Dagster
instance of the local stack instead, so the runs show in the Dagster UI.
"""

from __future__ import annotations

import dagster as dg

from twotier.config import Settings
from twotier.pipelines.assets.skeleton import make_skeleton_assets
from twotier.pipelines.resources import make_resources


def materialize_skeleton(
    settings: Settings,
    project: str = "movielens",
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """Load the project's Kafka events into the offline store, train and register the ranker.

    Args:
        settings: Where Kafka, MLflow and the offline store are.
        project: The project whose assets run (``<project>/events_offline`` then
            ``<project>/ranker_model``).
        instance: The Dagster instance recording the run; an ephemeral one by default.

    Returns:
        The run result; ``materialization_metadata(result, project, "ranker_model")``
        gives the registered version and AUC.

    Raises:
        dagster.DagsterExecutionStepExecutionError: An asset failed (the cause is chained).
    """
    return dg.materialize(
        make_skeleton_assets(project), resources=make_resources(settings), instance=instance
    )


def materialization_metadata(
    result: dg.ExecuteInProcessResult, project: str, asset: str
) -> dict[str, object]:
    """The metadata values of the asset ``<project>/<asset>`` in ``result``, as plain values."""
    key = dg.AssetKey([project, asset])
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == key:
            return {name: value.value for name, value in materialization.metadata.items()}
    raise KeyError(f"{key.to_user_string()} was not materialised in run {result.run_id}")
