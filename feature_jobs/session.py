"""The Spark session of the feature jobs: local mode on loopback, connector jars from the cache."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from twotier.config import LOOPBACK, Settings
from twotier.infra.spark import ensure_spark_jars

log = logging.getLogger(__name__)


def spark_dirs(settings: Settings) -> dict[str, Path]:
    """The folders Spark writes to, all under ``<data_dir>/spark``."""
    root = settings.data_dir / "spark"
    return {
        "warehouse": root / "warehouse",
        "ivy": root / "ivy",
        "local": root / "tmp",
        "derby": root / "derby",
    }


def spark_conf(settings: Settings, app_name: str, jars: list[Path]) -> dict[str, str]:
    """The Spark configuration of a feature-job session (pure; used by ``spark_session``).

    Local masters are pinned to loopback and get no UI; nothing is resolved with Ivy
    (``spark.jars`` lists local files only).
    """
    dirs = spark_dirs(settings)
    java_opts = f"-Djava.io.tmpdir={dirs['local']} -Dderby.system.home={dirs['derby']}"
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark.master,
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.jars.ivy": str(dirs["ivy"]),
        "spark.sql.warehouse.dir": str(dirs["warehouse"]),
        "spark.local.dir": str(dirs["local"]),
        "spark.driver.extraJavaOptions": java_opts,
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.streaming.metricsEnabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if settings.spark.master.startswith("local"):
        conf |= {
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.enabled": "false",
        }
    return conf


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """Start (or reuse) the feature-job Spark session.

    Args:
        settings: Uses ``spark`` (master, version, driver memory), ``data_dir`` and ``cache``.
        app_name: Shown in Spark's logs.

    Returns:
        A session with the Kafka connector on the classpath.

    Raises:
        StackError: The connector jars cannot be fetched or do not match pyspark.
    """
    jars = ensure_spark_jars(settings, log.info)
    for path in spark_dirs(settings).values():
        path.mkdir(parents=True, exist_ok=True)
    if settings.spark.master.startswith("local"):
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK
        os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(settings, app_name, jars).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("spark %s session %r on %s", session.version, app_name, settings.spark.master)
    return session
