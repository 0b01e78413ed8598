"""The Dagster code location of twotier: ``defs`` holds every project's pipelines.

Per project in ``settings.projects`` (``<p>`` below):

- assets and asset checks from ``make_project_assets(<p>)``, keyed ``<p>/...``;
- jobs ``<p>_retrain`` (every asset of ``<p>``), ``<p>_deploy_streaming`` (the 24/7
  online feature job) and ``<p>_compact_offline_store``;
- schedule ``<p>_retrain_schedule`` on ``pipelines.retrain_cron``;
- with experiments: job ``<p>_readout`` (the daily experiment assets) and its schedule
  ``<p>_readout_schedule`` on ``pipelines.readout_cron``, and job
  ``<p>_experiment_shuffle`` (a new assignment generation of a concluded experiment);
- sensors ``<p>_new_data_sensor`` and ``<p>_streaming_watchdog``.

Resources are chosen by deployment through settings, not by a second code path: the
same ``ConfigurableResource`` classes are built ``from_settings(load_settings())`` when
this module loads, so ``TWOTIER_*`` variables (or ``TWOTIER_CONFIG``) decide where they
point. Locally (the defaults) that is the stack of ``twotier up``: embedded chdb under
the data folder, FerretDB, ``local[2]`` Spark, automation off. A production deployment
sets ``offline_store.dsn: http(s)://...`` (a ClickHouse server), ``online_store.uri:
mongodb://...``, ``kafka.bootstrap_servers``, ``mlflow.tracking_uri``, ``spark.master``
and ``pipelines.retrain_schedule_running: true`` (docs/schedules_sensors.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from twotier.config import Settings, load_settings
from twotier.pipelines.assets import make_project_assets
from twotier.pipelines.jobs import (
    make_compact_offline_store_job,
    make_deploy_streaming_job,
    make_retrain_job,
)
from twotier.pipelines.jobs.experiment_shuffle import make_experiment_shuffle_job
from twotier.pipelines.jobs.readout import make_readout_job
from twotier.pipelines.resources import make_resources
from twotier.pipelines.schedules import make_readout_schedule, make_retrain_schedule
from twotier.pipelines.sensors import make_new_data_sensor, make_streaming_watchdog_sensor


def make_definitions(settings: Settings, projects: Sequence[str] | None = None) -> dg.Definitions:
    """Every project's assets, jobs, schedules and sensors, with resources for ``settings``.

    Args:
        settings: Where the resources point, the projects, and the automation defaults
            (``pipelines.retrain_cron``, ``pipelines.retrain_schedule_running``).
        projects: The projects to serve (default: every project in ``settings.projects``).
    """
    names = list(dict.fromkeys(projects if projects is not None else settings.projects))
    automation = (
        dg.DefaultSensorStatus.RUNNING
        if settings.pipelines.retrain_schedule_running
        else dg.DefaultSensorStatus.STOPPED
    )
    assets: list[Any] = []
    jobs: list[Any] = []
    schedules: list[dg.ScheduleDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    for project in names:
        project_assets = make_project_assets(
            project,
            settings.project_features(project),
            partitions_start=settings.pipelines.partitions_start,
            readout_start=settings.pipelines.readout_start,
            skew_max_mismatch_rate=settings.pipelines.skew_max_mismatch_rate,
            skew_min_rows=settings.pipelines.skew_min_rows,
        )
        retrain = make_retrain_job(project)
        deploy = make_deploy_streaming_job(project)
        assets += project_assets
        jobs += [retrain, deploy, make_compact_offline_store_job(project)]
        schedules.append(make_retrain_schedule(project, retrain, project_assets, settings))
        if settings.project_features(project).experiments:
            readout_job = make_readout_job(project)
            jobs.append(readout_job)
            experiments = list(settings.project_features(project).experiments)
            jobs.append(make_experiment_shuffle_job(project, experiments))
            schedules.append(make_readout_schedule(project, readout_job, settings))
        sensors += [
            make_new_data_sensor(
                project,
                retrain,
                project_assets,
                min_new_events=settings.pipelines.retrain_min_new_events,
                default_status=automation,
            ),
            make_streaming_watchdog_sensor(
                project, deploy, growth_evaluations=settings.pipelines.watchdog_growth_evaluations
            ),
        ]
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=make_resources(settings),
    )


defs = make_definitions(load_settings())
