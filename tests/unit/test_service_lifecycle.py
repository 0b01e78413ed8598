"""Service.start fails loudly and cleanly: StackError names the service and its log."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from twotier.config import Settings, load_settings
from twotier.infra.service import Service, StackError, pid_alive


class _ScriptService(Service):
    """A service whose process is a Python one-liner and that is never healthy."""

    script = ""

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return []

    @property
    def endpoint(self) -> str:
        return "nowhere"

    def install(self, progress: object = None) -> None:
        return None

    def command(self) -> list[str]:
        # The data folder as an argument marks every process of this test's service.
        return [sys.executable, "-c", self.script, str(self.data_dir)]

    def healthy(self) -> bool:
        return False


class _ExitsAtOnce(_ScriptService):
    name = "exits_at_once"
    script = "import sys; print('bad config', flush=True); sys.exit(3)"


class _NeverHealthy(_ScriptService):
    name = "never_healthy"
    # A parent and a child in the same process group: stop must take both.
    script = (
        "import subprocess, sys, time;"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]];"
        "child = subprocess.Popen(sleeper);"
        "print(child.pid, flush=True); time.sleep(600)"
    )


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    return load_settings(data_dir=tmp_path / "data", stack={"start_timeout_s": 3})


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def test_process_that_exits_at_start_raises_stack_error(settings: Settings) -> None:
    service = _ExitsAtOnce(settings)

    with pytest.raises(StackError) as caught:
        service.start()

    error = caught.value
    assert error.component == "exits_at_once"
    assert error.log == service.log_file
    assert str(service.log_file) in str(error)
    assert "exited during start-up" in str(error)
    assert "bad config" in service.log_file.read_text()
    assert not service.running()
    assert not service.pid_file.exists()


def test_service_that_never_becomes_healthy_is_stopped(settings: Settings) -> None:
    service = _NeverHealthy(settings)

    with pytest.raises(StackError) as caught:
        service.start()

    error = caught.value
    assert error.component == "never_healthy"
    assert "not healthy after 3 s" in str(error)
    assert str(service.log_file) in str(error)
    child_pid = int(service.log_file.read_text().split()[0])
    assert not pid_alive(child_pid)
    assert _processes_mentioning(str(service.data_dir)) == []
    assert not service.running()
    assert not service.pid_file.exists()
