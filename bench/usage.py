"""CPU and memory of each stack component, at idle or while a command (a benchmark) runs.

Read from ``/proc`` (psutil is not a dependency): per process, user + system CPU time
from ``/proc/<pid>/stat``, resident memory (``VmRSS``) from ``/proc/<pid>/status`` and,
where readable, proportional memory (``Pss``, shared pages split between the processes
that map them) from ``/proc/<pid>/smaps_rollup``. Processes are grouped by component:

* ``idle``: the services of a running stack, found through their pid files
  (``twotier.infra`` services): the process group each service leads plus its
  descendants; for Ray every process of the node (``RayService.node_processes``).
* ``during``: the process tree of a command, each process classified by its command
  line (``kafka``, ``secantusdb``, ``ferretdb``, ``mlflow``, ``dagster``, ``ray``,
  ``spark``), else by its nearest classified ancestor, else ``benchmark`` (the driver itself).

CPU is in percent of one core (200 = two cores busy). Memory sums over a component's
processes: RSS counts shared pages once per process, PSS does not.

Usage::

    .venv/bin/python bench/usage.py idle [--duration 30] [--out bench/results/usage_idle.json]
    .venv/bin/python bench/usage.py idle --test-stack   # the stack of tests/conftest.py
    .venv/bin/python bench/usage.py during --out /tmp/u.json -- .venv/bin/python bench/x.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
COMPONENTS = ("kafka", "secantusdb", "ferretdb", "mlflow", "dagster", "ray", "spark")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

Groups = Callable[[], dict[str, set[int]]]
"""Returns, at each sample, the pids of each component (processes come and go)."""


@dataclass(frozen=True)
class ProcSample:
    """One process at one instant."""

    cpu_ticks: int
    rss_bytes: int
    pss_bytes: int | None


# -- /proc ----------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group id) of every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def descendants(roots: set[int], table: Mapping[int, tuple[int, int]]) -> set[int]:
    """``roots`` and every process below them (by parent pid), among live processes."""
    found = {pid for pid in roots if pid in table}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def read_process(pid: int) -> ProcSample | None:
    """CPU ticks (user + system), RSS and PSS of one process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
    pss: int | None = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pss = None
    return ProcSample(ticks, rss, pss)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def classify(command: str) -> str | None:
    """The stack component a command line belongs to, or None if it is not one."""
    text = command.lower()
    if "kafka.kafka" in text or ("java" in text and "kafka-server" in text):
        return "kafka"
    if "org.apache.spark" in text or "twotier.feature_jobs" in text or "pyspark" in text:
        return "spark"
    if "secantusd-rs" in text.split(" ", 1)[0]:
        return "secantusdb"
    if "ferretdb" in text.split(" ", 1)[0] or "/ferretdb " in text:
        return "ferretdb"
    if "mlflow" in text and ("server" in text or "uvicorn" in text or "gunicorn" in text):
        return "mlflow"
    if "dagster" in text:
        return "dagster"
    markers = ("raylet", "gcs_server", "ray::", "/ray/", "ray start")
    if any(marker in text for marker in markers):
        return "ray"
    return None


# -- grouping ---------------------------------------------------------------------------


def stack_groups(settings: Any) -> Groups:
    """Pids of each service of the stack ``settings`` describes (running ones only)."""
    from twotier.infra.stack import make_service

    services = {name: make_service(name, settings) for name in settings.stack.resolved_services()}

    def groups() -> dict[str, set[int]]:
        table = process_table()
        found: dict[str, set[int]] = {}
        for name, service in services.items():
            leader = service.pid()
            if leader is None:
                continue
            if name == "ray":
                pids = set(service.node_processes())
            else:
                group = {pid for pid, (_, pgid) in table.items() if pgid == leader}
                pids = descendants(group | {leader}, table)
            found[name] = pids
        return found

    return groups


def tree_groups(root: int) -> Groups:
    """The process tree of ``root``, each process by its component (see ``classify``)."""
    known: dict[int, str] = {}

    def groups() -> dict[str, set[int]]:
        table = process_table()
        found: dict[str, set[int]] = {}
        for pid in sorted(descendants({root}, table)):
            if pid not in known:
                component = classify(cmdline(pid))
                parent = table[pid][0]
                known[pid] = component or known.get(parent, "benchmark")
            found.setdefault(known[pid], set()).add(pid)
        return found

    return groups


# -- sampling ---------------------------------------------------------------------------


def _snapshot(groups: dict[str, set[int]]) -> dict[str, dict[int, ProcSample]]:
    snap: dict[str, dict[int, ProcSample]] = {}
    for component, pids in groups.items():
        snap[component] = {}
        for pid in pids:
            sample = read_process(pid)
            if sample is not None:
                snap[component][pid] = sample
    return snap


class Sampler:
    """Samples the components of ``groups`` every ``interval_s`` until told to stop."""

    def __init__(self, groups: Groups, interval_s: float = 1.0) -> None:
        self.groups, self.interval_s = groups, interval_s
        self.samples: list[dict[str, Any]] = []
        self._t0 = time.monotonic()
        self._last = _snapshot(groups())
        self._last_t = self._t0

    def sample(self) -> None:
        """One sample: CPU over the time since the previous one, memory now."""
        now = time.monotonic()
        snap = _snapshot(self.groups())
        dt = max(now - self._last_t, 1e-6)
        row: dict[str, Any] = {"t_s": round(now - self._t0, 2), "components": {}}
        for component, procs in snap.items():
            before = self._last.get(component, {})
            ticks = sum(
                p.cpu_ticks - before[pid].cpu_ticks for pid, p in procs.items() if pid in before
            )
            pss = [p.pss_bytes for p in procs.values()]
            row["components"][component] = {
                "cpu_percent": round(100.0 * ticks / CLOCK_TICKS / dt, 1),
                "rss_mb": round(sum(p.rss_bytes for p in procs.values()) / MB, 1),
                "pss_mb": round(sum(pss) / MB, 1) if pss and None not in pss else None,  # type: ignore[arg-type]
                "processes": len(procs),
            }
        self.samples.append(row)
        self._last, self._last_t = snap, now

    def run_for(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            time.sleep(self.interval_s)
            self.sample()

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return summarize(self.samples)


def summarize(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and max CPU, RSS and PSS per component over ``samples``."""
    names = sorted({c for s in samples for c in s["components"]}, key=_component_order)
    out: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        rows = [s["components"][name] for s in samples if name in s["components"]]
        cpu = [r["cpu_percent"] for r in rows]
        rss = [r["rss_mb"] for r in rows]
        pss = [r["pss_mb"] for r in rows if r.get("pss_mb") is not None]
        out[name] = {
            "cpu_percent_mean": round(sum(cpu) / len(cpu), 1),
            "cpu_percent_max": max(cpu),
            "rss_mb_mean": round(sum(rss) / len(rss), 1),
            "rss_mb_max": max(rss),
            "pss_mb_max": max(pss) if pss else None,
            "processes_max": max(r["processes"] for r in rows),
        }
    return out


def _component_order(name: str) -> tuple[int, str]:
    order = (*COMPONENTS, "benchmark")
    return (order.index(name) if name in order else len(order), name)


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_mb": round(total_kb / 1024),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def measure_idle(
    settings: Any, duration_s: float = 30.0, interval_s: float = 1.0
) -> dict[str, Any]:
    """Usage of every running service of the stack ``settings`` describes, left alone.

    Raises:
        RuntimeError: No service of that stack is running.
    """
    groups = stack_groups(settings)
    running = groups()
    if not running:
        raise RuntimeError(
            f"no service of the stack in {settings.data_dir} is running: start it with "
            "`twotier up` (or point TWOTIER_DATA_DIR / the config file at a running stack)"
        )
    sampler = Sampler(groups, interval_s)
    sampler.run_for(duration_s)
    return {
        "kind": "idle",
        "stack": {"data_dir": str(settings.data_dir), "services": sorted(running)},
        "duration_s": duration_s,
        "interval_s": interval_s,
        "summary": sampler.summary(),
        "samples": sampler.samples,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass
class MeasuredRun:
    """A command run to completion (or timeout) while its process tree was sampled."""

    returncode: int | None
    timed_out: bool
    seconds: float
    usage: dict[str, Any]


def run_measured(
    command: Sequence[str],
    *,
    stdout: Any = None,
    stderr: Any = None,
    interval_s: float = 1.0,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> MeasuredRun:
    """Run ``command`` and sample its process tree by component until it exits.

    On timeout the command's whole process group is killed (it runs in its own session).
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        list(command),
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    sampler = Sampler(tree_groups(proc.pid), interval_s)
    timed_out = False
    while proc.poll() is None:
        time.sleep(interval_s)
        sampler.sample()
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            timed_out = True
            from twotier.infra.service import kill_group

            kill_group(proc.pid)
            break
    proc.wait()
    return MeasuredRun(
        returncode=proc.returncode,
        timed_out=timed_out,
        seconds=round(time.monotonic() - started, 1),
        usage={
            "kind": "during",
            "interval_s": interval_s,
            "summary": sampler.summary(),
            "samples": sampler.samples,
        },
    )


# -- command line -----------------------------------------------------------------------


def _settings(test_stack: bool) -> Any:
    if test_stack:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import test_settings  # the same helper the test fixtures use

        return test_settings()
    from twotier.config import load_settings

    return load_settings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    idle = sub.add_parser("idle", help="usage of a running stack left alone")
    idle.add_argument("--duration", type=float, default=30.0)
    idle.add_argument("--interval", type=float, default=1.0)
    idle.add_argument("--out", type=Path, default=RESULTS / "usage_idle.json")
    idle.add_argument(
        "--test-stack",
        action="store_true",
        help="the stack of tests/conftest.py (TWOTIER_TEST_DATA_DIR, TWOTIER_TEST_PORT_BASE)",
    )
    during = sub.add_parser("during", help="usage of a command's process tree while it runs")
    during.add_argument("--interval", type=float, default=1.0)
    during.add_argument("--timeout", type=float, default=None)
    during.add_argument("--out", type=Path, required=True)
    during.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)

    if args.mode == "idle":
        try:
            result = measure_idle(_settings(args.test_stack), args.duration, args.interval)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        code = 0
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("during: give the command after --")
        run = run_measured(command, interval_s=args.interval, timeout_s=args.timeout)
        result = {**run.usage, "command": command, "returncode": run.returncode}
        result.update(timed_out=run.timed_out, seconds=run.seconds, machine=machine())
        code = run.returncode if run.returncode is not None else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
