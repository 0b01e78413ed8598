"""Test helpers: the online store on another local server; a service killed as a crash would."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from twotier.config import Settings
from twotier.infra.service import Service, pid_alive

SERVERS = ("secantusdb", "ferretdb")
"""The local MongoDB-wire servers the contract tests run on."""


def with_online_server(settings: Settings, server: str) -> Settings:
    """``settings`` with the online store on the local ``server`` (secantusdb, ferretdb)."""
    stack = settings.stack.model_copy(update={"online_server": server})
    return settings.model_copy(update={"stack": stack})


def sigkill_service(service: Service) -> None:
    """SIGKILL the service's process group, as a crash would, and wait until it is gone."""
    pid = service.pid()
    assert pid is not None, f"{service.name} is not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    assert not pid_alive(pid), f"{service.name} survived SIGKILL"
