"""The readout job of a project: attribution, readouts and skew, by serve day."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # what dg.define_asset_job returns (not exported)
)

from twotier.pipelines.assets.keys import group_name
from twotier.pipelines.assets.partitions import RANGE_END_TAG, RANGE_START_TAG


def experiments_group(project: str) -> str:
    """The asset group of the project's daily experiment assets (not part of a retrain)."""
    return group_name(project, "experiments")


def readout_job_name(project: str) -> str:
    """``<project>_readout``."""
    return f"{project}_readout"


def make_readout_job(project: str) -> UnresolvedAssetJobDefinition:
    """Materialise the project's experiment assets for a range of serve days."""
    return dg.define_asset_job(
        readout_job_name(project),
        selection=dg.AssetSelection.groups(experiments_group(project)),
        description=f"Attribute {project}'s recommendations to later events and read out "
        "its experiments, by serve day (UTC).",
        tags={"twotier/project": project, "twotier/kind": "readout"},
    )


def readout_run_request(project: str, when: datetime) -> dg.RunRequest:
    """A run over yesterday and today (UTC) at ``when``: yesterday's attribution window is
    still open, so both days are refreshed (each re-run replaces its days' rows)."""
    today = when.strftime("%Y-%m-%d")
    yesterday = (when - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(
        job_name=readout_job_name(project),
        tags={
            "twotier/project": project,
            "twotier/trigger": "schedule",
            RANGE_START_TAG: yesterday,
            RANGE_END_TAG: today,
        },
    )
