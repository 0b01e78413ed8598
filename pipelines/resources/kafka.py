"""Kafka as a Dagster resource: reading a project's event topic."""

from __future__ import annotations

import dagster as dg

from twotier.config import KafkaConfig, Settings
from twotier.events import Event


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster holding each project's events topic."""

    bootstrap_servers: str
    """``host:port[,host:port...]`` of the brokers."""
    read_timeout_s: float = 120.0
    """How long ``read_events`` may take to drain a topic."""

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaResource:
        """The resource for ``settings.kafka``."""
        return cls(bootstrap_servers=settings.kafka.bootstrap)

    def read_events(self, project: str) -> list[Event]:
        """Every event in the project's topic, from the beginning to the end offsets at start.

        Raises:
            TwotierError: Kafka is unreachable.
        """
        from twotier.replay import read_events

        settings = Settings(kafka=KafkaConfig(bootstrap_servers=self.bootstrap_servers))
        return read_events(settings, project, timeout_s=self.read_timeout_s)
