"""The whole local stack through `Stack`: up is idempotent, down leaves nothing, failures roll back.

Uses its own data folder and the port block above the session fixtures' stack.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from twotier.config import Settings
from twotier.infra.service import StackError, pid_alive, port_free
from twotier.infra.stack import Stack


@pytest.fixture(scope="module")
def stack_settings(settings: Settings, make_test_settings: Callable[..., Settings]) -> Settings:
    data_dir = Path(str(settings.data_dir) + "-stack")
    shutil.rmtree(data_dir, ignore_errors=True)
    return make_test_settings(data_dir=data_dir, port_base=settings.kafka.port + 300)


@pytest.fixture(scope="module")
def stack(stack_settings: Settings) -> Iterator[Stack]:
    stack = Stack(stack_settings)
    try:
        yield stack
    finally:
        stack.down()


def _all_ports(stack: Stack) -> list[tuple[str, int]]:
    return [p for s in stack.services for p in s.ports]


def test_second_install_downloads_and_builds_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.install()
    # Without Maven and Go on PATH a second install can only succeed from the cache.
    path = [
        p
        for p in os.environ["PATH"].split(os.pathsep)
        if not (shutil.which("mvn", path=p) or shutil.which("go", path=p))
    ]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    lines: list[str] = []
    started = time.monotonic()
    stack.install(lines.append)
    assert time.monotonic() - started < 30
    assert not [line for line in lines if "fetching" in line or "building" in line]


def test_up_is_idempotent_and_down_leaves_nothing(stack: Stack) -> None:
    lines: list[str] = []
    stack.up(lines.append)
    statuses = stack.status()
    assert [s.name for s in statuses] == ["kafka", "secantusdb", "mlflow", "dagster", "ray"]
    assert all(s.healthy for s in statuses), statuses
    pids = {s.name: s.pid for s in statuses}

    again: list[str] = []
    stack.up(again.append)
    assert {s.name: s.pid for s in stack.status()} == pids
    assert [f"{s.name}: already running" for s in statuses] == [
        line for line in again if "already running" in line
    ]

    stack.down()
    time.sleep(1)
    assert not any(s.running for s in stack.status())
    for pid in pids.values():
        assert pid is not None and not pid_alive(pid)
    busy = [p for p in _all_ports(stack) if not port_free(*p)]
    assert busy == [], f"ports still bound after down: {busy}"


def test_port_in_use_rolls_back_what_was_started(stack: Stack) -> None:
    mlflow = next(s for s in stack.services if s.name == "mlflow")
    host, port = mlflow.ports[0]
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind((host, port))
    blocker.listen()
    try:
        with pytest.raises(StackError) as info:
            stack.up()
        message = str(info.value)
        assert message.startswith("mlflow:")
        assert str(port) in message and "Fix:" in message
        # kafka and secantusdb were started before mlflow failed: both are stopped again.
        assert not any(s.running for s in stack.status())
    finally:
        blocker.close()
