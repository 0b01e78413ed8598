"""Dagster jobs of twotier beyond asset materialisation: retrain, streaming deploy, upkeep.

Each module holds one job factory taking the project; ``definitions.py`` builds them for
every project in ``settings.projects``.
"""

from __future__ import annotations

from twotier.pipelines.jobs.offline_upkeep import compact_job_name, make_compact_offline_store_job
from twotier.pipelines.jobs.retrain import make_retrain_job, retrain_job_name, retrain_run_request
from twotier.pipelines.jobs.stack import stack_settings
from twotier.pipelines.jobs.streaming import (
    DeployStreamingConfig,
    deploy_streaming_job_name,
    make_deploy_streaming_job,
)

__all__ = [
    "DeployStreamingConfig",
    "compact_job_name",
    "deploy_streaming_job_name",
    "make_compact_offline_store_job",
    "make_deploy_streaming_job",
    "make_retrain_job",
    "retrain_job_name",
    "retrain_run_request",
    "stack_settings",
]
