"""kafka-python clients as the core uses them, with errors that say how to fix them."""

from __future__ import annotations

from typing import Any

from twotier.config import Settings
from twotier.errors import TwotierError


def kafka_error(settings: Settings, exc: BaseException) -> TwotierError:
    """A one-line ``TwotierError`` for a Kafka failure, naming the brokers and the fix."""
    return TwotierError(
        f"kafka at {settings.kafka.bootstrap}: {type(exc).__name__}: {exc}. "
        "Fix: start the stack (`twotier up`) or set kafka.bootstrap_servers in twotier.yaml"
    )


def make_producer(settings: Settings, client_id: str, **options: Any) -> Any:
    """A ``KafkaProducer`` for ``settings.kafka`` that waits for all in-sync replicas.

    Args:
        settings: Where Kafka is.
        client_id: Names the client in broker logs.
        **options: Override the defaults (``acks="all"``, ``linger_ms=20``, 256 kB batches).

    Raises:
        TwotierError: Kafka is unreachable.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    config: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "bootstrap_timeout_ms": 10_000,
        **options,
    }
    try:
        return KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap, client_id=client_id, **config
        )
    except (KafkaError, OSError) as exc:
        raise kafka_error(settings, exc) from exc


def make_consumer(settings: Settings, client_id: str, **options: Any) -> Any:
    """A ``KafkaConsumer`` for ``settings.kafka`` with no group and no auto-commit.

    twotier reads Kafka by explicit offsets (Spark's checkpoints and the offset handoff
    own the positions), so consumers are assigned partitions, never subscribed.

    Args:
        settings: Where Kafka is.
        client_id: Names the client in broker logs.
        **options: More ``KafkaConsumer`` options, or overrides of the defaults.

    Raises:
        TwotierError: Kafka is unreachable.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    config: dict[str, Any] = {
        "group_id": None,
        "enable_auto_commit": False,
        "bootstrap_timeout_ms": 10_000,
        **options,
    }
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap, client_id=client_id, **config
        )
    except (KafkaError, OSError) as exc:
        raise kafka_error(settings, exc) from exc


def topic_partitions(consumer: Any, topic: str) -> list[Any]:
    """The ``TopicPartition`` s of ``topic`` in partition order; empty if it does not exist."""
    from kafka import TopicPartition

    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
