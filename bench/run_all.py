"""Run every benchmark script that exists, then write one JSON, a Markdown table and plots.

Each benchmark (``bench/<name>.py``) runs as a subprocess while ``bench/usage.py``
samples the CPU and memory of its process tree by component. A benchmark that fails
or times out is recorded with its status and the tail of its stderr; the others still
run. Its numbers are the JSON it wrote to ``bench/results/<name>.json`` during this run,
else the last JSON document it printed on stdout.

Before the benchmarks, the idle usage of a running stack is measured if one is running
(the settings of ``twotier.yaml`` / ``TWOTIER_*``); otherwise ``bench/results/usage_idle.json``
(written by ``bench/usage.py idle``) is used if it exists.

Writes ``<results>/all.json``, ``<results>/README.md`` and ``<results>/*.png``, and the
logs of every run to ``<results>/logs/``.

Usage::

    .venv/bin/python bench/run_all.py                          # every benchmark, default args
    .venv/bin/python bench/run_all.py --only feature_read \\
        --args "feature_read=--no-save --scenario 300:20 --runs 1 --candidates 50"
    .venv/bin/python bench/run_all.py --report-only            # rebuild from the saved JSONs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_report
from usage import machine, measure_idle, run_measured

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BENCHMARKS = (
    "online_store",
    "feature_read",
    "streaming",
    "retrain",
    "serving",
    "quality",
    "readout",
)
"""In run order; a script that does not exist (yet) is skipped."""
STDERR_TAIL_LINES = 30


def _last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object printed on its own lines (``{`` at the start of a line)."""
    starts = [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_benchmark(
    name: str,
    script: Path,
    args: Sequence[str],
    results_dir: Path,
    *,
    saved_json: Path | None = None,
    timeout_s: float | None = None,
    interval_s: float = 1.0,
) -> dict[str, Any]:
    """Run one benchmark script and return its record for ``all.json``.

    Args:
        name: The benchmark's name (its file stem).
        script: The script to run with this Python.
        args: Extra command-line arguments.
        results_dir: Where its stdout and stderr logs go (``logs/<name>.*``).
        saved_json: The file the script writes its result to; used when it changed
            during this run, else the last JSON on stdout.
        timeout_s: Kill the benchmark's process group after this many seconds.
        interval_s: Usage sampling interval.

    Returns:
        ``{"name", "command", "status": "ok"|"failed"|"timeout", "returncode", "seconds",
        "result", "source", "usage", "stderr_tail"}``.
    """
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
    command = [sys.executable, str(script), *args]
    before = saved_json.stat().st_mtime if saved_json and saved_json.exists() else None
    print(f"bench {name}: {shlex.join(command)}", flush=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        run = run_measured(
            command,
            stdout=out,
            stderr=err,
            interval_s=interval_s,
            timeout_s=timeout_s,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    result: dict[str, Any] | None = None
    source = ""
    if saved_json and saved_json.exists() and saved_json.stat().st_mtime != before:
        try:
            result, source = json.loads(saved_json.read_text()), str(saved_json.name)
        except json.JSONDecodeError:
            result = None
    if result is None:
        result = _last_json(out_path.read_text(errors="replace"))
        source = "stdout" if result is not None else ""
    if run.timed_out:
        status = "timeout"
    elif run.returncode != 0:
        status = "failed"
    elif result is None:
        status = "failed"
        source = "no JSON written or printed"
    else:
        status = "ok"
    record = {
        "name": name,
        "command": command,
        "status": status,
        "returncode": run.returncode,
        "seconds": run.seconds,
        "result": result if status == "ok" else None,
        "source": source,
        "usage": run.usage,
        "stderr_tail": _tail(err_path) if status != "ok" else "",
    }
    print(f"bench {name}: {status} in {run.seconds:.0f} s", flush=True)
    return record


def collect_saved(results_dir: Path, names: Sequence[str] = BENCHMARKS) -> dict[str, Any]:
    """Records for the benchmarks' saved JSON files, without running anything."""
    records: dict[str, Any] = {}
    for name in names:
        path = results_dir / f"{name}.json"
        if not path.exists():
            continue
        try:
            result = json.loads(path.read_text())
            status = "ok"
        except json.JSONDecodeError as exc:
            result, status = None, "failed"
            records[name] = {"name": name, "status": status, "stderr_tail": f"{path}: {exc}"}
            continue
        records[name] = {
            "name": name,
            "status": status,
            "seconds": None,
            "result": result,
            "source": f"{path.name} (saved)",
            "usage": None,
            "stderr_tail": "",
        }
    return records


def _idle_usage(results_dir: Path, measure: bool, seconds: float) -> dict[str, Any] | None:
    if measure:
        from twotier.config import load_settings

        try:
            usage = measure_idle(load_settings(), duration_s=seconds)
        except RuntimeError as exc:
            print(f"idle usage: not measured ({exc})", flush=True)
        else:
            (results_dir / "usage_idle.json").write_text(json.dumps(usage, indent=2) + "\n")
            return usage
    saved = results_dir / "usage_idle.json"
    if saved.exists():
        usage = json.loads(saved.read_text())
        usage.setdefault("source", f"{saved.name} (saved)")
        return usage
    return None


def _parse_args_map(items: Sequence[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in BENCHMARKS:
            raise SystemExit(
                f"error: --args {item!r}: use NAME=ARGS with NAME one of {list(BENCHMARKS)}"
            )
        extra[name] = shlex.split(value)
    return extra


def build_report(
    benchmarks: Mapping[str, Any],
    idle: Mapping[str, Any] | None,
    results_dir: Path,
    mode: str = "run",
) -> dict[str, Any]:
    """Write ``all.json``, ``README.md`` and the plots; return the ``all.json`` document.

    ``mode`` is ``run`` (benchmarks run now) or ``report-only`` (saved JSONs collected).
    """
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
        "machine": machine(),
        "idle_usage": idle,
        "benchmarks": dict(benchmarks),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "all.json").write_text(json.dumps(document, indent=2) + "\n")
    for path in write_report(document, results_dir):
        print(f"wrote {path}", flush=True)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="repeatable")
    parser.add_argument("--args", action="append", default=[], metavar="NAME=ARGS")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per benchmark (s)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--no-idle", action="store_true", help="do not measure a running stack")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the saved JSONs"
    )
    args = parser.parse_args(argv)
    extra = _parse_args_map(args.args)
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    idle = _idle_usage(results_dir, not args.no_idle and not args.report_only, args.idle_seconds)
    names = args.only or list(BENCHMARKS)
    if args.report_only:
        records = collect_saved(results_dir, names)
    else:
        records = {}
        for name in names:
            script = BENCH / f"{name}.py"
            if not script.exists():
                print(f"bench {name}: skipped ({script} does not exist yet)", flush=True)
                continue
            records[name] = run_benchmark(
                name,
                script,
                extra.get(name, []),
                results_dir,
                saved_json=RESULTS / f"{name}.json",
                timeout_s=args.timeout,
            )
    mode = "report-only" if args.report_only else "run"
    document = build_report(records, idle, results_dir, mode)
    failed = [n for n, b in document["benchmarks"].items() if b.get("status") != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (see {results_dir}/README.md)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
