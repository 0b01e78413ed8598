"""Schedules of twotier: a retrain and a readout schedule per project.

The schedule runs ``<project>_retrain`` (every asset of the project) on
``settings.pipelines.retrain_cron`` (hourly by default, UTC). It starts as running only
when ``settings.pipelines.retrain_schedule_running`` is true (``TWOTIER_PIPELINES__RETRAIN_
SCHEDULE_RUNNING=true``, off by default so a laptop does not retrain every hour); it can
also be switched on in the Dagster UI (Automation) or with ``dagster schedule start``.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # what dg.define_asset_job returns (not exported)
)

from twotier.config import Settings
from twotier.pipelines.jobs.readout import readout_run_request
from twotier.pipelines.jobs.retrain import retrain_run_request


def retrain_schedule_name(project: str) -> str:
    """``<project>_retrain_schedule``."""
    return f"{project}_retrain_schedule"


def automation_status(settings: Settings) -> dg.DefaultScheduleStatus:
    """RUNNING when ``pipelines.retrain_schedule_running`` is set, else STOPPED."""
    if settings.pipelines.retrain_schedule_running:
        return dg.DefaultScheduleStatus.RUNNING
    return dg.DefaultScheduleStatus.STOPPED


def make_retrain_schedule(
    project: str,
    retrain_job: UnresolvedAssetJobDefinition,
    assets: Sequence[Any],
    settings: Settings,
) -> dg.ScheduleDefinition:
    """The retrain schedule of ``project`` on ``settings.pipelines.retrain_cron``.

    Args:
        project: The project.
        retrain_job: ``make_retrain_job(project)``.
        assets: ``make_project_assets(project)`` (a time-partitioned graph retrains the
            latest partition at the tick time).
        settings: ``pipelines.retrain_cron`` and ``pipelines.retrain_schedule_running``.
    """

    @dg.schedule(
        name=retrain_schedule_name(project),
        cron_schedule=settings.pipelines.retrain_cron,
        job=retrain_job,
        execution_timezone="UTC",
        default_status=automation_status(settings),
        description=f"Retrain {project} on {settings.pipelines.retrain_cron!r} (UTC).",
        tags={"twotier/project": project},
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return retrain_run_request(
            project,
            assets,
            context.scheduled_execution_time,
            tags={"twotier/trigger": "schedule"},
        )

    return retrain_schedule


def readout_schedule_name(project: str) -> str:
    """``<project>_readout_schedule``."""
    return f"{project}_readout_schedule"


def make_readout_schedule(
    project: str, readout_job: UnresolvedAssetJobDefinition, settings: Settings
) -> dg.ScheduleDefinition:
    """Refresh yesterday's and today's readouts of ``project`` on
    ``settings.pipelines.readout_cron`` (running when the retrain schedule is)."""

    @dg.schedule(
        name=readout_schedule_name(project),
        cron_schedule=settings.pipelines.readout_cron,
        job=readout_job,
        execution_timezone="UTC",
        default_status=automation_status(settings),
        description=f"Read out {project}'s experiments on {settings.pipelines.readout_cron!r} "
        "(UTC): yesterday and today.",
        tags={"twotier/project": project},
    )
    def readout_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return readout_run_request(project, context.scheduled_execution_time)

    return readout_schedule
