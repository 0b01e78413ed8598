"""The Spark Kafka connector jars, fetched once from Maven Central into the cache.

Spark itself comes from the installed ``pyspark`` wheel; only the Kafka connector
(``spark-sql-kafka-0-10``) and those of its runtime dependencies that the wheel does
not already ship (``spark-token-provider-kafka-0-10``, ``kafka-clients``,
``commons-pool2``) are added, so that no class is on the classpath twice. Sessions
get them through ``spark.jars``: nothing is resolved with Ivy at start-up.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from twotier.config import Settings
from twotier.infra.maven import fetch_jars
from twotier.infra.service import StackError
from twotier.progress import Progress, quiet

_COMPONENT = "spark"
_VERSIONED_JAR = re.compile(
    r"^(?P<artifact>.+)-(?P<version>\d+(?:\.\d+)+(?:[-.][A-Za-z0-9_]+)*)\.jar$"
)
_FILTERED_MARKER = ".filtered"


def pyspark_home() -> Path:
    """The installed pyspark package folder (holds ``jars/``), found without importing it."""
    try:
        dist = metadata.distribution("pyspark")
    except metadata.PackageNotFoundError as exc:
        raise StackError(
            _COMPONENT, "pyspark is not installed", "pip install -c constraints.txt pyspark"
        ) from exc
    return Path(str(dist.locate_file("pyspark")))


def pyspark_version() -> str:
    """The installed pyspark version, e.g. ``4.2.0``."""
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError as exc:
        raise StackError(
            _COMPONENT, "pyspark is not installed", "pip install -c constraints.txt pyspark"
        ) from exc


def artifact_name(jar: Path | str) -> str:
    """The Maven artifact id of a jar file name: ``kafka-clients-3.9.2.jar`` → ``kafka-clients``."""
    name = Path(jar).name
    match = _VERSIONED_JAR.match(name)
    return match.group("artifact") if match else name.removesuffix(".jar")


def check_spark_version(settings: Settings) -> None:
    """Raise ``StackError`` unless ``settings.spark`` matches the installed pyspark.

    The connector jars must be built for the same Spark and Scala versions as the
    jars inside the pyspark wheel, or the job fails later with linkage errors.
    """
    installed = pyspark_version()
    if installed != settings.spark.version:
        raise StackError(
            _COMPONENT,
            f"spark.version is {settings.spark.version!r} but the installed pyspark is {installed}",
            f"set spark.version: {installed!r} in twotier.yaml (or install "
            f"pyspark=={settings.spark.version})",
        )
    core = sorted((pyspark_home() / "jars").glob("spark-core_*.jar"))
    if core:
        scala = core[0].name.removeprefix("spark-core_").split("-")[0]
        if scala != settings.spark.scala:
            raise StackError(
                _COMPONENT,
                f"spark.scala is {settings.spark.scala!r} but pyspark {installed} is built "
                f"for Scala {scala}",
                f"set spark.scala: {scala!r} in twotier.yaml",
            )


def spark_jars_dir(settings: Settings) -> Path:
    """Where the connector jars of ``settings.spark.version`` are cached."""
    return settings.cache / "spark" / settings.spark.version / "jars"


def connector_coordinates(settings: Settings) -> list[str]:
    """The Maven coordinates of the Kafka connector for the configured Spark version."""
    scala, version = settings.spark.scala, settings.spark.version
    return [f"org.apache.spark:spark-sql-kafka-0-10_{scala}:{version}"]


def ensure_spark_jars(settings: Settings, progress: Progress = quiet) -> list[Path]:
    """Fetch the Kafka connector and its missing runtime dependencies; cached.

    The connector is resolved transitively with Maven, then every jar whose artifact
    pyspark already ships (Scala, Hadoop client, lz4, snappy, slf4j, ...) is removed.
    A second call only lists the cache folder.

    Args:
        settings: Uses ``spark.version``, ``spark.scala`` and ``cache``.
        progress: Receives one line per step.

    Returns:
        The jar files to put on ``spark.jars``, sorted.

    Raises:
        StackError: pyspark does not match ``spark.version``, Maven is missing, or the
            download failed.
    """
    check_spark_version(settings)
    dest = spark_jars_dir(settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / ".jars.lock")):
        filtered = dest / _FILTERED_MARKER
        jars = fetch_jars(_COMPONENT, connector_coordinates(settings), dest, progress=progress)
        if not filtered.exists():
            shipped = {artifact_name(j) for j in (pyspark_home() / "jars").glob("*.jar")}
            for jar in jars:
                if artifact_name(jar) in shipped:
                    jar.unlink()
            filtered.write_text("\n".join(sorted(shipped)))
            jars = sorted(dest.glob("*.jar"))
            progress(f"spark: Kafka connector jars ready: {', '.join(j.name for j in jars)}")
    if not any(artifact_name(j).startswith("spark-sql-kafka-0-10") for j in jars):
        raise StackError(
            _COMPONENT,
            f"the Kafka connector jar is missing from {dest}",
            f"delete {dest} and run `twotier install` again",
        )
    return jars
