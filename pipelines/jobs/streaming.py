"""The 24/7 online feature job of a project, deployed by a Dagster job.

``<project>_deploy_streaming`` starts ``python -m twotier.feature_jobs online --project P``
(what ``twotier stream`` runs) as a detached process with a pid file and a log under
``<data_dir>/jobs/<project>/`` (``twotier.feature_jobs.detached``). It is idempotent: a
running job is left alone unless the run asks for a restart (the watchdog sensor does when
the job's lag keeps growing). The process outlives the Dagster run; ``twotier
stream-stop`` stops it. With a cluster ``spark.master`` the driver still starts here in
client mode; cluster deploy mode uses spark-submit (docs/schedules_sensors.md).
"""

import time

import dagster as dg

from twotier.config import Settings
from twotier.feature_jobs.detached import last_report, start_online, tail
from twotier.naming import asset_prefix
from twotier.pipelines.jobs.stack import stack_settings
from twotier.pipelines.resources.kafka import KafkaResource
from twotier.pipelines.resources.online_store import OnlineStoreResource
from twotier.pipelines.resources.spark import SparkResource

SETTLE_S = 3.0
"""A started process must still be alive after this long, or the deploy fails."""


class DeployStreamingConfig(dg.Config):
    """Run config of the deploy job (the watchdog sets ``restart`` and ``reason``)."""

    restart: bool = False
    """Stop a running job first and start it again."""
    reason: str = "deploy"
    """Why the run was requested (logged)."""
    wait_for_report_s: float = 0.0
    """Wait this long for the job's first status report after a start (0: do not wait)."""


def deploy_streaming_job_name(project: str) -> str:
    """``<project>_deploy_streaming``."""
    return f"{asset_prefix(project)[0]}_deploy_streaming"


def make_deploy_streaming_job(project: str) -> dg.JobDefinition:
    """The job that makes sure ``project``'s online feature job runs."""

    @dg.op(name=f"{asset_prefix(project)[0]}_start_online_job", tags={"twotier/project": project})
    def start_online_job(
        context: dg.OpExecutionContext,
        config: DeployStreamingConfig,
        kafka: KafkaResource,
        online_store: OnlineStoreResource,
        spark: SparkResource,
    ) -> dg.Output[int]:
        """Start the online job unless it runs (or restart it); outputs its pid."""
        settings = stack_settings(kafka, online_store, spark)
        context.log.info(f"online job {project}: {config.reason}")
        started_ms = int(time.time() * 1000)
        result = start_online(settings, project, restart=config.restart, progress=context.log.info)
        process = result.process
        if result.started:
            time.sleep(SETTLE_S)
            if not process.alive():
                raise dg.Failure(
                    f"online job {project} (pid {process.pid}) exited right after its start",
                    metadata={"log": dg.MetadataValue.path(process.log), "tail": tail(process.log)},
                )
            _wait_for_report(context, settings, project, started_ms, config.wait_for_report_s)
        report = last_report(settings, project) or {}
        return dg.Output(
            process.pid,
            metadata={
                "pid": process.pid,
                "started": result.started,
                "started_at": process.started_at,
                "reason": config.reason,
                "log": dg.MetadataValue.path(process.log),
                "command": " ".join(process.command),
                "spark_master": spark.master,
                "last_state": str(report.get("state", "no report yet")),
                "last_lag": str(report.get("lag", "?")),
            },
        )

    @dg.job(
        name=deploy_streaming_job_name(project),
        description=(
            f"Start {project}'s 24/7 online feature job (Spark Structured Streaming) in the "
            "background unless it runs; `twotier stream-stop` stops it."
        ),
        tags={"twotier/project": project, "twotier/kind": "streaming"},
    )
    def deploy_streaming() -> None:
        start_online_job()

    return deploy_streaming


def _wait_for_report(
    context: dg.OpExecutionContext,
    settings: Settings,
    project: str,
    since_ms: int,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = last_report(settings, project) or {}
        if int(report.get("updated_at_ms", 0)) >= since_ms:
            context.log.info(f"online job {project}: first report: state {report.get('state')}")
            return
        time.sleep(1.0)
    if timeout_s > 0:
        context.log.warning(f"online job {project}: no report within {timeout_s:.0f} s")
