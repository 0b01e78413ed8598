"""Runs the Dagster webserver and daemon as one service process.

``python -m twotier.infra.dagster_supervisor PLAN_JSON``, where the plan is
``{"before": [argv, ...], "run": [argv, ...]}`` (built by ``DagsterService``): the
``before`` commands run once, in order, then the ``run`` commands together. The children
share the supervisor's process group. SIGTERM or SIGINT is forwarded to them; when one
exits, the others are stopped and the supervisor exits with the first one's code, so the
stack sees one process that lives exactly as long as all of them. The supervisor imports
only the standard library, to stay small.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from types import FrameType

STOP_GRACE_S = 10.0


def _terminate(children: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(sig)


def _wait_all(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


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
    """Run one-shot ``before`` commands, then ``commands`` until one exits or a signal comes.

    Returns:
        The exit code of the first child that ended (0 after a forwarded signal).
    """
    for command in before or []:
        print(f"supervisor: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    children = [subprocess.Popen(command, stdin=subprocess.DEVNULL) for command in commands]
    for command, child in zip(commands, children, strict=True):
        print(f"supervisor: started pid {child.pid}: {' '.join(command)}", flush=True)
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _terminate(children, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        ended = [child for child in children if child.poll() is not None]
        if ended:
            first = ended[0]
            print(
                f"supervisor: pid {first.pid} exited with {first.returncode}; stopping the rest",
                flush=True,
            )
            _terminate(children)
            _wait_all(children, STOP_GRACE_S)
            _stop_group_members(STOP_GRACE_S)
            return first.returncode or 1
        time.sleep(0.5)
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
