"""Materialise a project's assets in this process, against the stack of ``settings``.

For scripts, tests and benchmarks; ``twotier materialize`` runs the same assets through
the Dagster instance of the local stack instead, so the runs show in the Dagster UI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from twotier.config import Settings
from twotier.pipelines.assets import make_project_assets
from twotier.pipelines.assets.partitions import (
    DEFAULT_PARTITIONS_START,
    range_tags,
    training_partitions,
)
from twotier.pipelines.resources import make_resources


def all_partitions(start: str = DEFAULT_PARTITIONS_START) -> tuple[str, str]:
    """The first and last training-set partition keys (the current month is the last)."""
    keys = training_partitions(start).get_partition_keys()
    return keys[0], keys[-1]


def materialize_project(
    settings: Settings,
    project: str,
    *,
    selection: Sequence[str] | None = None,
    partition_range: tuple[str, str] | None = None,
    partition_key: str | None = None,
    run_config: Mapping[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
    resources: Mapping[str, object] | None = None,
    raise_on_error: bool = True,
    partitions_start: str | None = None,
) -> dg.ExecuteInProcessResult:
    """Run the project's asset graph (or ``selection`` of it) in one in-process run.

    Args:
        settings: Where Kafka, MLflow, serving and the offline store are; declares the project.
        project: The project.
        selection: Asset names (without the project prefix) to run; all by default.
        partition_range: First and last training-set partitions of the run; all by default
            (one run covers the range: every asset has a single-run backfill policy).
        partition_key: Run exactly one partition instead of a range.
        run_config: Run config, e.g. ``{"ops": {"<project>__tier2_ranker": {"config":
            {"auc_floor": 0.6}}}}``.
        instance: The Dagster instance recording the run; an ephemeral one by default.
        resources: Replacements for some of ``make_resources(settings)``.
        raise_on_error: Raise when a step fails (False: inspect ``result.success``).
        partitions_start: The first month of the partitions (default:
            ``settings.pipelines.partitions_start``).

    Returns:
        The run result; ``materialization_metadata(result, project, "<asset>")`` reads one.
    """
    partitions_start = partitions_start or settings.pipelines.partitions_start
    assets = make_project_assets(
        project, settings.project_features(project), partitions_start=partitions_start
    )
    tags: dict[str, str] = {}
    if partition_key is None:
        first, last = partition_range or all_partitions(partitions_start)
        tags = range_tags(first, last)
    keys = None if selection is None else [dg.AssetKey([project, name]) for name in selection]
    return dg.materialize(
        assets,
        resources={**make_resources(settings), **(resources or {})},
        instance=instance,
        run_config=dict(run_config) if run_config else None,
        tags=tags,
        partition_key=partition_key,
        selection=keys,
        raise_on_error=raise_on_error,
    )


def materialization_metadata(
    result: dg.ExecuteInProcessResult, project: str, asset: str
) -> dict[str, object]:
    """The metadata values of the asset ``<project>/<asset>`` in ``result``, as plain values.

    For a partitioned asset, the metadata of its last materialisation event in the run.
    """
    key = dg.AssetKey([project, asset])
    found: dict[str, object] | None = None
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == key:
            found = {name: value.value for name, value in materialization.metadata.items()}
    if found is None:
        raise KeyError(f"{key.to_user_string()} was not materialised in run {result.run_id}")
    return found
