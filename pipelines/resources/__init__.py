"""Dagster resources of twotier, each a ``ConfigurableResource`` built from ``Settings``.

``make_resources(settings)`` gives the resource dict of ``definitions.py``; setting
``TWOTIER_*`` variables (or ``TWOTIER_CONFIG``) before the code location loads points
every resource at another stack.
"""

from __future__ import annotations

from typing import Any

from twotier.config import Settings
from twotier.pipelines.resources.kafka import KafkaResource
from twotier.pipelines.resources.mlflow import MLflowResource
from twotier.pipelines.resources.offline_store import OfflineStoreResource
from twotier.pipelines.resources.online_store import OnlineStoreResource
from twotier.pipelines.resources.serving import ServingResource
from twotier.pipelines.resources.spark import SparkResource

__all__ = [
    "KafkaResource",
    "MLflowResource",
    "OfflineStoreResource",
    "OnlineStoreResource",
    "ServingResource",
    "SparkResource",
    "make_resources",
]


def make_resources(settings: Settings) -> dict[str, Any]:
    """The resources every twotier asset may ask for, pointing at ``settings``' stack."""
    return {
        "kafka": KafkaResource.from_settings(settings),
        "mlflow": MLflowResource.from_settings(settings),
        "offline_store": OfflineStoreResource.from_settings(settings),
        "online_store": OnlineStoreResource.from_settings(settings),
        "spark": SparkResource.from_settings(settings),
        "serving": ServingResource.from_settings(settings),
    }
