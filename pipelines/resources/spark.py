"""Spark as a Dagster resource: where feature jobs run and how the online job is started."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from twotier.config import Settings, SparkConfig
from twotier.feature_jobs.detached import StartResult, online_job_command, start_online


class SparkResource(dg.ConfigurableResource):
    """The Spark master of the feature jobs and the Kafka connector jars they need.

    Locally ``master`` is ``local[N]``: the online job is a detached process of this
    machine. On a cluster set ``spark.master`` (``spark://``, ``yarn``, ``k8s://``): the
    same ``start_online`` runs the driver here in client mode; for cluster deploy mode
    the job is spark-submitted instead (docs/feature_jobs.md, "On Kubernetes").
    """

    master: str
    version: str
    data_dir: str
    """The folder of checkpoints, job status, pid files and logs (``settings.data_dir``)."""
    cache_dir: str
    """Where the connector jars are cached (``settings.cache``)."""
    scala: str = "2.13"
    driver_memory: str = "1g"
    trigger_seconds: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> SparkResource:
        """The resource for ``settings.spark``."""
        spark = settings.spark
        return cls(
            master=spark.master,
            version=spark.version,
            data_dir=str(settings.data_dir),
            cache_dir=str(settings.cache),
            scala=spark.scala,
            driver_memory=spark.driver_memory,
            trigger_seconds=spark.trigger_seconds,
        )

    @property
    def local(self) -> bool:
        """Whether jobs run in local mode on this machine."""
        return self.master.startswith("local")

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with this resource's Spark section and folders (what a job sees)."""
        config = SparkConfig(
            master=self.master,
            version=self.version,
            scala=self.scala,
            driver_memory=self.driver_memory,
            trigger_seconds=self.trigger_seconds,
        )
        return settings.model_copy(
            update={
                "spark": config,
                "data_dir": Path(self.data_dir),
                "cache_dir": Path(self.cache_dir),
            }
        )

    def jar_paths(self, settings: Settings) -> list[Path]:
        """The Kafka connector jars for ``spark.jars`` (fetched into the cache once).

        Raises:
            StackError: pyspark does not match ``version``, or the download failed.
        """
        from twotier.infra.spark import ensure_spark_jars

        return ensure_spark_jars(self.settings(settings))

    def online_job_command(self, settings: Settings, project: str) -> list[str]:
        """The command line that runs the project's online feature job."""
        return online_job_command(self.settings(settings), project)

    def start_online_job(
        self, settings: Settings, project: str, *, restart: bool = False
    ) -> StartResult:
        """Start the project's online job in the background unless it runs (idempotent).

        See ``twotier.feature_jobs.detached.start_online``.
        """
        return start_online(self.settings(settings), project, restart=restart)
