"""The full ``Settings`` a job or sensor passes on, rebuilt from its Dagster resources.

Jobs that start processes (the online feature job) hand them ``TWOTIER_*`` variables, so
they need whole settings: the project declarations come from ``load_settings()`` in the
run's process, every connection and folder from the resources, so that the resources a
deployment chose (``definitions.py``, or a test's ``resources=``) are what the process sees.
"""

from __future__ import annotations

from twotier.config import Settings, load_settings
from twotier.pipelines.resources.kafka import KafkaResource
from twotier.pipelines.resources.online_store import OnlineStoreResource
from twotier.pipelines.resources.spark import SparkResource


def stack_settings(
    kafka: KafkaResource,
    online_store: OnlineStoreResource,
    spark: SparkResource,
    base: Settings | None = None,
) -> Settings:
    """``base`` (default ``load_settings()``) with Kafka, online store, Spark and folders
    taken from the resources."""
    settings = spark.settings(online_store.settings(base or load_settings()))
    kafka_config = settings.kafka.model_copy(update={"bootstrap_servers": kafka.bootstrap_servers})
    return settings.model_copy(update={"kafka": kafka_config})
