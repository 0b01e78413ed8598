"""The Dagster supervisor's restart policy, on plain ``sleep`` / ``false`` children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twotier.infra.service import pid_alive

# Runs the supervisor with short back-offs so a crash loop ends in well under a second.
_FAST = (
    "import json, sys\n"
    "import twotier.infra.dagster_supervisor as s\n"
    "s.RESTART_BACKOFF_S, s.MAX_BACKOFF_S, s.POLL_S = 0.05, 0.1, 0.05\n"
    "sys.exit(s.supervise(json.loads(sys.argv[1])))\n"
)


def _supervisor(commands: list[list[str]], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _FAST, json.dumps(commands)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z" and int(stat[1]) == parent:
                found.append(int(entry))
    return sorted(found)


def _started(log: Path) -> list[int]:
    """Pids the supervisor logged as started."""
    return [int(m) for m in re.findall(r"started \S+ as pid (\d+)", log.read_text())]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_killed_child_is_restarted_and_the_other_keeps_running(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    sup = _supervisor([["sleep", "300"], ["sleep", "301"]], log)
    try:
        _wait_for(lambda: len(_children(sup.pid)) == 2)
        first, second = _children(sup.pid)
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: len(_children(sup.pid)) == 2 and first not in _children(sup.pid))
        assert second in _children(sup.pid)
        assert sup.poll() is None
        text = log.read_text()
        assert f"sleep (pid {first}) exited with -9" in text and "restarting it in" in text
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
    assert not any(pid_alive(pid) for pid in _started(log))


def test_a_crash_loop_ends_the_supervisor_with_the_childs_code(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    sup = _supervisor([["false"], ["sleep", "300"]], log)
    try:
        code = sup.wait(30)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert code == 1
    text = log.read_text()
    assert text.count("restarting it in") == 5
    assert "6 crashes within 300 s, giving up" in text
    assert not any(pid_alive(pid) for pid in _started(log))  # the sleep went with it
