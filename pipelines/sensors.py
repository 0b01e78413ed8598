"""Sensors of twotier, per project: new offline data → retrain, and the streaming watchdog.

``<project>_new_data_sensor`` counts the project's events in the offline store and
requests ``<project>_retrain`` once ``min_new_events`` arrived since the last request
(its cursor keeps the count and newest event time of that request). It is on by default
only with ``pipelines.retrain_schedule_running`` (automation off on a laptop).

``<project>_streaming_watchdog`` keeps the 24/7 online feature job alive once it was
deployed (pid file present): when its process is gone it requests
``<project>_deploy_streaming``; when its Kafka lag grew at each of the last
``growth_evaluations`` evaluations it requests a restart. A job stopped with
``twotier stream-stop`` has no pid file and is left alone, so the watchdog is on by default.
"""

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # what dg.define_asset_job returns (not exported)
)

from twotier.feature_jobs.detached import current_lag, read_process
from twotier.offline_store import OfflineStoreError
from twotier.pipelines.jobs.retrain import retrain_run_request
from twotier.pipelines.jobs.stack import stack_settings
from twotier.pipelines.jobs.streaming import deploy_streaming_job_name
from twotier.pipelines.resources.kafka import KafkaResource
from twotier.pipelines.resources.offline_store import OfflineStoreResource
from twotier.pipelines.resources.online_store import OnlineStoreResource
from twotier.pipelines.resources.spark import SparkResource

DEFAULT_MIN_NEW_EVENTS = 1000
"""New offline events that make a retrain worth it."""
SENSOR_LOCK_TIMEOUT_S = 10.0
"""How long the new-data sensor waits for an embedded store that a run holds."""
DEFAULT_GROWTH_EVALUATIONS = 3
"""Evaluations in a row with a growing lag that make the watchdog restart the job."""

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def new_data_sensor_name(project: str) -> str:
    """``<project>_new_data_sensor``."""
    return f"{project}_new_data_sensor"


def watchdog_sensor_name(project: str) -> str:
    """``<project>_streaming_watchdog``."""
    return f"{project}_streaming_watchdog"


# -- new offline data -------------------------------------------------------------


@dataclass(frozen=True)
class NewDataCursor:
    """What the new-data sensor saw when it last requested a retrain."""

    events: int = 0
    max_ts: int | None = None
    """Newest event time (ms) in the store at that request."""

    @classmethod
    def parse(cls, cursor: str | None) -> Self:
        """The cursor from its JSON (a missing or unreadable one starts from zero)."""
        try:
            data = json.loads(cursor) if cursor else {}
            return cls(events=int(data.get("events", 0)), max_ts=data.get("max_ts"))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def offline_event_stats(
    offline_store: OfflineStoreResource, project: str
) -> tuple[int, int | None]:
    """(distinct events, newest event time in ms) of ``project`` in the offline store.

    An embedded store held by a run is waited for at most ``SENSOR_LOCK_TIMEOUT_S``.

    Raises:
        OfflineStoreError: The store is busy or unreachable.
    """
    quick = OfflineStoreResource(
        dsn=offline_store.dsn,
        database=offline_store.database,
        lock_timeout_s=min(offline_store.lock_timeout_s, SENSOR_LOCK_TIMEOUT_S),
    )
    with quick.open() as store:
        if not store.has_table(project, "events"):
            return 0, None
        table = store.table(project, "events")
        row = store.query_df(f"SELECT count() AS n, max(ts) AS ts FROM {table} FINAL")
    events = int(row["n"].iloc[0])
    return events, int(row["ts"].iloc[0]) if events else None


def make_new_data_sensor(
    project: str,
    retrain_job: UnresolvedAssetJobDefinition,
    assets: Sequence[Any],
    *,
    min_new_events: int = DEFAULT_MIN_NEW_EVENTS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds: int = 120,
) -> dg.SensorDefinition:
    """A sensor that requests ``retrain_job`` once ``min_new_events`` new events are stored.

    Args:
        project: The project whose offline events table is read.
        retrain_job: ``make_retrain_job(project)``.
        assets: ``make_project_assets(project)`` (for the partition to retrain).
        min_new_events: New events since the last request that trigger a retrain.
        default_status: Whether the sensor starts on.
        minimum_interval_seconds: Time between evaluations.

    Raises:
        ValueError: ``min_new_events`` is below 1.
    """
    if min_new_events < 1:
        raise ValueError(
            f"min_new_events is {min_new_events} for {project}'s new-data sensor: use 1 or more"
        )

    @dg.sensor(
        name=new_data_sensor_name(project),
        job=retrain_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Retrain {project} when {min_new_events} new events reached the offline store."
        ),
    )
    def new_data_sensor(
        context: dg.SensorEvaluationContext, offline_store: OfflineStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        last = NewDataCursor.parse(context.cursor)
        try:
            events, max_ts = offline_event_stats(offline_store, project)
        except OfflineStoreError as exc:
            return dg.SkipReason(f"offline store not readable now: {exc}")
        if events < last.events:  # the store was rebuilt: start counting again
            context.update_cursor(NewDataCursor(events, max_ts).dumps())
            return dg.SkipReason(
                f"{project}: {events} events, fewer than {last.events} at the last request "
                "(store rebuilt?); counting from here"
            )
        new = events - last.events
        if new < min_new_events:
            return dg.SkipReason(
                f"{project}: {new} new events since the last retrain request "
                f"({events} stored); waiting for {min_new_events}"
            )
        request = retrain_run_request(
            project,
            assets,
            datetime.now(UTC),
            run_key=f"{project}-events-{events}-{max_ts}",
            tags={"twotier/trigger": "new_data", "twotier/new_events": str(new)},
        )
        context.log.info(f"{project}: {new} new events ({events} stored): requesting a retrain")
        return dg.SensorResult(run_requests=[request], cursor=NewDataCursor(events, max_ts).dumps())

    return new_data_sensor


# -- streaming watchdog -------------------------------------------------------------


@dataclass
class WatchdogCursor:
    """The lags the watchdog read for one process (pid and start time)."""

    pid: int = 0
    start_ticks: int = 0
    lags: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, cursor: str | None) -> Self:
        try:
            data = json.loads(cursor) if cursor else {}
            return cls(int(data["pid"]), int(data["start_ticks"]), [int(x) for x in data["lags"]])
        except (ValueError, TypeError, KeyError):
            return cls()

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def lag_keeps_growing(lags: Sequence[int], evaluations: int) -> bool:
    """Whether the lag grew at each of the last ``evaluations`` readings.

    Example:
        >>> lag_keeps_growing([5, 9, 14, 30], 3), lag_keeps_growing([5, 9, 9, 30], 3)
        (True, False)
    """
    window = list(lags)[-(evaluations + 1) :]
    return len(window) == evaluations + 1 and all(b > a for a, b in itertools.pairwise(window))


def _deploy_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:  # evaluated without an instance
        return False
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=_IN_FLIGHT), limit=1)
    return bool(runs)


def make_streaming_watchdog_sensor(
    project: str,
    deploy_job: dg.JobDefinition,
    *,
    growth_evaluations: int = DEFAULT_GROWTH_EVALUATIONS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """A sensor that restarts ``project``'s deployed online job when it died or lags more
    and more.

    Args:
        project: The project.
        deploy_job: ``make_deploy_streaming_job(project)``.
        growth_evaluations: Growing-lag evaluations in a row that trigger a restart.
        default_status: Whether the sensor starts on (on: it only acts on deployed jobs).
        minimum_interval_seconds: Time between evaluations.

    Raises:
        ValueError: ``growth_evaluations`` is below 1.
    """
    if growth_evaluations < 1:
        raise ValueError(
            f"growth_evaluations is {growth_evaluations} for {project}'s watchdog: use 1 or more"
        )
    op_name = f"{project}_start_online_job"

    def deploy(reason: str, restart: bool) -> dg.RunRequest:
        config = {"restart": restart, "reason": reason}
        return dg.RunRequest(
            run_config={"ops": {op_name: {"config": config}}},
            tags={"twotier/project": project, "twotier/trigger": "watchdog"},
        )

    @dg.sensor(
        name=watchdog_sensor_name(project),
        job=deploy_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Restart {project}'s deployed online feature job when its process is gone or "
            f"its Kafka lag grew {growth_evaluations} evaluations in a row."
        ),
    )
    def streaming_watchdog(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        online_store: OnlineStoreResource,
        spark: SparkResource,
    ) -> dg.SensorResult | dg.SkipReason:
        settings = stack_settings(kafka, online_store, spark)
        process = read_process(settings, project)
        if process is None:
            return dg.SkipReason(
                f"{project}: the online job is not deployed (run {deploy_job.name})"
            )
        if _deploy_in_flight(context, deploy_streaming_job_name(project)):
            return dg.SkipReason(f"{project}: a {deploy_job.name} run is in progress")
        if not process.alive():
            reason = f"watchdog: process {process.pid} is gone"
            context.log.warning(f"{project}: {reason}; requesting a restart")
            return dg.SensorResult(
                run_requests=[deploy(reason, restart=False)], cursor=WatchdogCursor().dumps()
            )
        seen = WatchdogCursor.parse(context.cursor)
        if (seen.pid, seen.start_ticks) != (process.pid, process.start_ticks):
            seen = WatchdogCursor(process.pid, process.start_ticks)
        lag = current_lag(settings, project)
        if lag is None:
            return dg.SkipReason(f"{project}: pid {process.pid} runs; lag unknown (Kafka?)")
        seen.lags = [*seen.lags, lag][-(growth_evaluations + 1) :]
        if lag_keeps_growing(seen.lags, growth_evaluations):
            reason = f"watchdog: lag grew {growth_evaluations} times in a row: {seen.lags}"
            context.log.warning(f"{project}: {reason}; requesting a restart")
            return dg.SensorResult(
                run_requests=[deploy(reason, restart=True)], cursor=WatchdogCursor().dumps()
            )
        context.update_cursor(seen.dumps())
        return dg.SkipReason(f"{project}: pid {process.pid} runs, lag {lag} (history {seen.lags})")

    return streaming_watchdog
