"""Kafka and FerretDB service configuration, and their errors when a toolchain is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from twotier.config import Settings
from twotier.infra.ferretdb import FerretDBService
from twotier.infra.kafka import KafkaService, random_cluster_id
from twotier.infra.service import StackError


def props(text: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def test_kafka_properties_are_single_node_kraft_on_loopback(settings: Settings) -> None:
    kafka = KafkaService(settings)
    p = props(kafka.render_properties())
    port, cport = settings.kafka.port, settings.kafka.controller_port
    assert p["process.roles"] == "broker,controller"
    assert p["listeners"] == f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"
    assert "127.0.0.1" in p["advertised.listeners"]
    assert p["controller.quorum.bootstrap.servers"] == f"127.0.0.1:{cport}"
    assert p["log.dirs"].startswith(str(settings.data_dir))
    assert p["offsets.topic.replication.factor"] == "1"
    assert p["transaction.state.log.replication.factor"] == "1"
    assert p["auto.create.topics.enable"] == "true"
    assert p["group.initial.rebalance.delay.ms"] == "0"
    assert list(kafka.ports) == [("127.0.0.1", port), ("127.0.0.1", cport)]


def test_kafka_command_uses_heap_and_log4j2_config(settings: Settings) -> None:
    cmd = KafkaService(settings).command()
    assert f"-Xmx{settings.kafka.heap_mb}m" in cmd
    log4j = next(a for a in cmd if a.startswith("-Dlog4j2.configurationFile="))
    assert Path(log4j.split("=", 1)[1]).is_file()
    assert cmd[-2:] == ["kafka.Kafka", str(KafkaService(settings).server_properties)]


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_missing_java_is_a_stack_error_with_a_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"kafka: no Java runtime .* Fix: install a JDK"):
        KafkaService(settings).command()


def test_missing_go_is_a_stack_error_with_a_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fresh = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    with pytest.raises(StackError, match=r"ferretdb: the Go toolchain .* Fix: install Go"):
        FerretDBService(fresh).install()


def test_ferretdb_listens_on_loopback_only_without_debug_or_telemetry(settings: Settings) -> None:
    service = FerretDBService(settings)
    cmd = service.command()
    assert f"--listen-addr=127.0.0.1:{settings.ferretdb.port}" in cmd
    assert "--debug-addr=-" in cmd
    assert "--telemetry=disable" in cmd
    assert "--handler=sqlite" in cmd
    assert f"--sqlite-url=file:{service.data_dir}/" in cmd
    assert service.binary.parent.name == settings.ferretdb.version
