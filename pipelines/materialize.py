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
from twotier.pipelines.assets.keys import DAILY_ASSETS
from twotier.pipelines.assets.partitions import (
    DEFAULT_PARTITIONS_START,
    DEFAULT_READOUT_START,
    daily_partitions,
    range_tags,
    training_partitions,
)
from twotier.pipelines.resources import make_resources


def all_partitions(start: str = DEFAULT_PARTITIONS_START) -> tuple[str, str]:
    """The first and last training-set partition keys (the current month is the last)."""
    keys = training_partitions(start).get_partition_keys()
    return keys[0], keys[-1]


def default_range(
    names: Sequence[str],
    partitions_start: str = DEFAULT_PARTITIONS_START,
    readout_start: str = DEFAULT_READOUT_START,
) -> tuple[str, str]:
    """Every partition of the assets ``names``: the training months from
    ``partitions_start`` for the training assets, the serve days from ``readout_start``
    for the daily experiment ones.

    Raises:
        ValueError: ``names`` mixes both kinds (one run holds one kind of partition).
    """
    daily = sorted(set(names) & DAILY_ASSETS)
    if not daily:
        return all_partitions(partitions_start)
    if len(daily) < len(set(names)):
        monthly = sorted(set(names) - DAILY_ASSETS)
        raise ValueError(
            f"{', '.join(daily)} are partitioned by serve day and {', '.join(monthly)} by "
            "training month; materialise them in separate runs"
        )
    keys = daily_partitions(readout_start).get_partition_keys()
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
        selection: Asset names (without the project prefix) to run; by default every
            asset but the daily experiment ones (``DAILY_ASSETS``, the readout job's).
        partition_range: First and last partitions of the run (training months, or serve
            days for the daily assets); all by default (one run covers the range: every
            asset has a single-run backfill policy).
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

    Raises:
        ValueError: ``selection`` mixes daily and monthly assets.
    """
    partitions_start = partitions_start or settings.pipelines.partitions_start
    assets = make_project_assets(
        project,
        settings.project_features(project),
        partitions_start=partitions_start,
        readout_start=settings.pipelines.readout_start,
        skew_max_mismatch_rate=settings.pipelines.skew_max_mismatch_rate,
        skew_min_rows=settings.pipelines.skew_min_rows,
    )
    if selection is None:
        selection = [
            key.path[-1]
            for asset in assets
            if isinstance(asset, dg.AssetsDefinition)
            for key in asset.keys
            if key.path[-1] not in DAILY_ASSETS
        ]
    tags: dict[str, str] = {}
    if partition_key is None:
        found = default_range(selection, partitions_start, settings.pipelines.readout_start)
        tags = range_tags(*(partition_range or found))
    keys = [dg.AssetKey([project, name]) for name in selection]
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
