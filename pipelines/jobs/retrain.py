"""The retrain job of a project: every asset under the project's key prefix."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # what dg.define_asset_job returns (not exported)
)

from twotier.naming import asset_prefix
from twotier.pipelines.jobs.readout import experiments_group


def retrain_job_name(project: str) -> str:
    """``<project>_retrain``."""
    return f"{asset_prefix(project)[0]}_retrain"


def make_retrain_job(project: str) -> UnresolvedAssetJobDefinition:
    """Materialise every asset (and run every check) of ``project``: features → training
    sets → both tiers → ONNX → parity → register → promote. The daily experiment assets
    (readouts, skew) are the readout job's."""
    return dg.define_asset_job(
        retrain_job_name(project),
        selection=dg.AssetSelection.key_prefixes(asset_prefix(project))
        - dg.AssetSelection.groups(experiments_group(project)),
        description=f"Retrain {project}: every asset with the key prefix {project}/ "
        "but the daily experiment readouts.",
        tags={"twotier/project": project, "twotier/kind": "retrain"},
    )


def _partitions_def(assets: Sequence[Any], project: str) -> dg.PartitionsDefinition | None:
    daily = experiments_group(project)
    found = {
        id(a.partitions_def): a.partitions_def
        for a in assets
        if _partitioned(a) and daily not in a.group_names_by_key.values()
    }
    if len(found) > 1:
        raise ValueError(
            "the project's assets have several partitions definitions; the retrain job "
            "needs one (use the same time partitions for every partitioned asset)"
        )
    return next(iter(found.values()), None)


def _partitioned(asset: Any) -> bool:
    return isinstance(asset, dg.AssetsDefinition) and asset.partitions_def is not None


def retrain_run_request(
    project: str,
    assets: Sequence[Any],
    when: datetime | None,
    *,
    run_key: str | None = None,
    tags: dict[str, str] | None = None,
) -> dg.RunRequest:
    """A run of the retrain job; for time-partitioned assets, of the latest partition at
    ``when`` (a schedule's tick time, or now).

    Args:
        project: The project.
        assets: ``make_project_assets(project)``, to find the partitions.
        when: The time whose last complete partition is retrained.
        run_key: Deduplicates requests (sensors).
        tags: Extra run tags (why the run was requested).
    """
    partitions = _partitions_def(assets, project)
    partition_key = None
    if partitions is not None:
        with dg.partition_loading_context(effective_dt=when):
            partition_key = partitions.get_last_partition_key()
    return dg.RunRequest(
        run_key=run_key,
        job_name=retrain_job_name(project),
        partition_key=partition_key,
        tags={"twotier/project": project, **(tags or {})},
    )
