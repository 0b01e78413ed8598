"""Spark setup that needs no JVM: connector jar names, version checks, session config."""

from __future__ import annotations

from pathlib import Path

import pytest

from twotier.config import Settings
from twotier.feature_jobs.session import spark_conf
from twotier.infra.service import StackError
from twotier.infra.spark import (
    artifact_name,
    check_spark_version,
    connector_coordinates,
    pyspark_version,
    spark_jars_dir,
)


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("spark-sql-kafka-0-10_2.13-4.2.0.jar", "spark-sql-kafka-0-10_2.13"),
        ("kafka-clients-3.9.2.jar", "kafka-clients"),
        ("commons-pool2-2.13.1.jar", "commons-pool2"),
        ("zstd-jni-1.5.7-7.jar", "zstd-jni"),
        ("lz4-java-1.10.1.jar", "lz4-java"),
        (
            "netty-transport-native-epoll-4.1.118.Final-linux-x86_64.jar",
            "netty-transport-native-epoll",
        ),
    ],
)
def test_artifact_name_strips_the_version(jar: str, artifact: str) -> None:
    assert artifact_name(jar) == artifact


def test_connector_matches_the_installed_pyspark(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    check_spark_version(settings)
    assert connector_coordinates(settings) == [
        f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark_version()}"
    ]
    assert spark_jars_dir(settings) == tmp_path / "cache" / "spark" / pyspark_version() / "jars"


def test_a_spark_version_other_than_pyspark_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, spark={"version": "3.5.1"})
    with pytest.raises(StackError, match=r"spark.version is '3.5.1' but the installed pyspark"):
        check_spark_version(settings)


def test_a_scala_version_other_than_pyspark_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, spark={"scala": "2.12"})
    with pytest.raises(StackError, match=r"spark.scala is '2.12'"):
        check_spark_version(settings)


def test_local_session_is_on_loopback_with_local_jars_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, spark={"driver_memory": "768m"})
    jar = tmp_path / "x.jar"
    conf = spark_conf(settings, "app", [jar])
    assert conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.jars"] == str(jar)
    assert "spark.jars.packages" not in conf
    assert conf["spark.driver.memory"] == "768m"
    assert conf["spark.sql.shuffle.partitions"] == "2"
    assert conf["spark.sql.warehouse.dir"].startswith(str(tmp_path))
