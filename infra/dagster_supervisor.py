"""Runs the Dagster webserver and daemon as one service process, restarting either on a crash.

``python -m twotier.infra.dagster_supervisor PLAN_JSON``, where the plan is
``{"before": [argv, ...], "run": [argv, ...]}`` (built by ``DagsterService``): the
``before`` commands run once, in order, then the ``run`` commands together. The children
share the supervisor's process group.

A child that exits on its own (a crash, an OOM kill, ``kill -9``) is started again after
a back-off (``RESTART_BACKOFF_S``, doubled per quick crash up to ``MAX_BACKOFF_S``, reset
once a child stayed up ``STABLE_AFTER_S``); the other child keeps running, so a dead
daemon never takes the UI down and a dead webserver never stops schedules. A child that
crashes ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S`` is a crash loop: the supervisor
stops the rest and exits with that child's code, so ``twotier status`` shows the service
down and its log says why. SIGTERM or SIGINT is forwarded to the children and ends the
supervisor. It imports only the standard library, to stay small.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

STOP_GRACE_S = 10.0
RESTART_BACKOFF_S = 1.0
"""Wait before the first restart of a crashed child."""
MAX_BACKOFF_S = 30.0
"""Longest wait between restarts of a child that keeps crashing."""
STABLE_AFTER_S = 60.0
"""A child that ran this long before exiting is restarted after ``RESTART_BACKOFF_S`` again."""
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
"""More than ``MAX_RESTARTS`` crashes of one child within this window end the supervisor."""
POLL_S = 0.5


def _log(message: str) -> None:
    print(f"supervisor: {message}", flush=True)


def _label(command: list[str]) -> str:
    """``dagster-daemon`` for ``.../bin/dagster-daemon run -m ...``."""
    return Path(command[0]).name if command else "?"


@dataclass
class Child:
    """One supervised command, its current process and its crash history."""

    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = field(default_factory=lambda: RESTART_BACKOFF_S)
    restart_at: float | None = None
    crashes: deque[float] = field(default_factory=deque)

    @property
    def label(self) -> str:
        return _label(self.command)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        self.restart_at = None
        _log(f"started {self.label} as pid {self.proc.pid}: {' '.join(self.command)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def crashed(self, now: float) -> bool:
        """Record an unexpected exit; returns False once the child is in a crash loop."""
        assert self.proc is not None
        uptime = now - self.started_at
        if uptime >= STABLE_AFTER_S:
            self.backoff_s = RESTART_BACKOFF_S
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > RESTART_WINDOW_S:
            self.crashes.popleft()
        if len(self.crashes) > MAX_RESTARTS:
            _log(
                f"{self.label} (pid {self.proc.pid}) exited with {self.proc.returncode} after "
                f"{uptime:.1f} s: {len(self.crashes)} crashes within {RESTART_WINDOW_S:.0f} s, "
                "giving up; stopping the rest (read the errors above)"
            )
            return False
        _log(
            f"{self.label} (pid {self.proc.pid}) exited with {self.proc.returncode} after "
            f"{uptime:.1f} s; restarting it in {self.backoff_s:.0f} s "
            f"(crash {len(self.crashes)} of at most {MAX_RESTARTS} per {RESTART_WINDOW_S:.0f} s)"
        )
        self.restart_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
        return True


def _terminate(children: list[Child], sig: int = signal.SIGTERM) -> None:
    for child in children:
        if child.proc is not None and child.alive():
            child.proc.send_signal(sig)


def _wait_all(children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _group_members() -> list[int]:
    """Other live processes of this process group (code servers, launched runs)."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[2] the process group id.
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry))
    return members


def _stop_group_members(timeout: float) -> None:
    """SIGTERM, then SIGKILL, every other process of the group, so none outlives us."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = _group_members()
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_members():
            time.sleep(0.2)


def supervise(commands: list[list[str]], before: list[list[str]] | None = None) -> int:
    """Run one-shot ``before`` commands, then keep ``commands`` running until a signal comes.

    A crashed child is restarted with a back-off; a child in a crash loop ends the
    supervisor (see the module docstring).

    Returns:
        0 after a forwarded signal, else the exit code of the child that crash-looped.
    """
    for command in before or []:
        _log(" ".join(command))
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    children = [Child(command) for command in commands]
    for child in children:
        child.start()
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _terminate(children, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        now = time.monotonic()
        for child in children:
            if stopping:
                break
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                continue
            assert child.proc is not None
            if child.proc.poll() is None:
                continue
            if not child.crashed(now):
                _terminate(children)
                _wait_all(children, STOP_GRACE_S)
                _stop_group_members(STOP_GRACE_S)
                return child.proc.returncode or 1
        time.sleep(POLL_S)
    _terminate(children)  # also a child restarted while the signal came in
    _wait_all(children, STOP_GRACE_S)
    _stop_group_members(STOP_GRACE_S)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m twotier.infra.dagster_supervisor PLAN_JSON", file=sys.stderr)
        return 2
    plan = json.loads(argv[0])
    return supervise(plan["run"], before=plan.get("before", []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
