"""The benchmark report: headline table (Markdown) and plots (PNG) from ``all.json``.

``bench/run_all.py`` collects every benchmark's JSON into one document::

    {"generated_at": ..., "machine": {...}, "idle_usage": {...} | null,
     "benchmarks": {"<name>": {"status": "ok" | "failed" | "timeout" | "not run",
                               "result": {...} | null, "usage": {...} | null,
                               "stderr_tail": str, "seconds": float, ...}}}

This module turns that document into ``README.md`` and PNG plots. It knows the shapes
of ``feature_read`` and ``streaming``; for any other benchmark it reads the generic
parts: ``targets`` (booleans named ``*_met``) and numbers under ``headline`` or
``median``, and plots any list of numbers whose key names latency or freshness.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PLOTS = ("latency.png", "freshness.png", "throughput.png", "usage.png")


@dataclass(frozen=True)
class Row:
    """One line of the headline table."""

    benchmark: str
    metric: str
    value: str
    target: str = ""
    met: bool | None = None


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def _feature_read_rows(result: Mapping[str, Any]) -> list[Row]:
    head, targets = result["headline"], result.get("targets", {})
    name = "feature_read"
    where = f"{head.get('scenario')} items"
    return _matrix_rows(head, targets, name, where) + _reader_rows(head, targets, name, where)


def _reader_rows(
    head: Mapping[str, Any], targets: Mapping[str, Any], name: str, where: str
) -> list[Row]:
    """Serving's ``FeatureReader`` with a cold and a warm entity cache (newer results only)."""
    rows = [
        Row(
            name,
            f"reader {state} p99 ({where})",
            _fmt(head[f"reader_{state}"]["p99_ms"], "ms"),
            targets.get(f"{state}_p99_ms", ""),
            targets.get(f"{state}_p99_met"),
        )
        for state in ("cold", "warm")
        if f"reader_{state}" in head
    ]
    if "cold_ratio_p99" in head:
        rows.append(
            Row(
                name,
                "reader cold / bare find (p99)",
                _fmt(head["cold_ratio_p99"]),
                targets.get("cold_ratio", ""),
                targets.get("cold_ratio_met"),
            )
        )
    return rows


def _matrix_rows(
    head: Mapping[str, Any], targets: Mapping[str, Any], name: str, where: str
) -> list[Row]:
    return [
        Row(name, f"matrix p50 ({where})", _fmt(head["matrix"]["p50_ms"], "ms")),
        Row(
            name,
            f"matrix p99 ({where})",
            _fmt(head["matrix"]["p99_ms"], "ms"),
            targets.get("p99_ms", ""),
            targets.get("p99_met"),
        ),
        Row(name, f"bare find p99 ({where})", _fmt(head["bare_find"]["p99_ms"], "ms")),
        Row(
            name,
            "matrix / bare find (p50, p99)",
            f"{_fmt(head['ratio_p50'])}, {_fmt(head['ratio_p99'])}",
            targets.get("ratio", ""),
            targets.get("ratio_met"),
        ),
    ]


def _streaming_rows(result: Mapping[str, Any]) -> list[Row]:
    median, targets = result["median"], result.get("targets", {})
    name = "streaming"
    return [
        Row(name, "produced events/s", _fmt(median.get("produced_events_per_s"))),
        Row(
            name,
            "processed events/s",
            _fmt(median.get("processed_events_per_s")),
            f">= {_fmt(targets.get('events_per_s'))}" if "events_per_s" in targets else "",
            targets.get("events_per_s_met"),
        ),
        Row(name, "freshness p50 (seen markers)", _fmt(median.get("freshness_p50_s"), "s")),
        Row(
            name,
            "freshness p99 (lower bound)",
            _fmt(median.get("freshness_p99_lower_bound_s"), "s"),
            f"<= {_fmt(targets.get('freshness_p99_s'))} s" if "freshness_p99_s" in targets else "",
            targets.get("freshness_p99_met"),
        ),
    ]


SERVER_COLUMNS = (
    ("find_in_500_p50_ms", "`$in` 500 p50 ms"),
    ("find_in_500_p99_ms", "`$in` 500 p99 ms"),
    ("find_in_500_as_4_concurrent_p99_ms", "4 x 125 concurrent p99 ms"),
    ("find_one_p99_ms", "`find_one` p99 ms"),
    ("get_groups_user_plus_500_p99_ms", "user + 500 items p99 ms"),
    ("cas_updates_per_s_j_true", "CAS updates/s (j)"),
    ("cas_updates_per_s_j_false", "CAS updates/s (no j)"),
    ("change_streams", "change streams"),
    ("transactions", "transactions"),
)


def _online_store_rows(result: Mapping[str, Any]) -> list[Row]:
    """The default server's headline numbers (the side-by-side table has the rest)."""
    name = "online_store"
    rows: list[Row] = []
    for server, numbers in result["median"].items():
        if not server.startswith("secantusdb --sync"):
            continue
        rows.append(Row(name, f"{server}: $in 500 p99", _fmt(numbers["find_in_500_p99_ms"], "ms")))
        rows.append(
            Row(name, f"{server}: CAS updates/s", _fmt(numbers["cas_updates_per_s_j_true"]))
        )
        kills = numbers.get("durability_kill_9") or {}
        if kills:
            lost = kills["trials_with_lost_writes"]
            rows.append(
                Row(
                    name,
                    f"{server}: kill -9 trials losing an acknowledged write",
                    f"{lost} of {kills['trials']}",
                    "0",
                    lost == 0,
                )
            )
    return rows


def online_store_table(report: Mapping[str, Any]) -> list[str]:
    """The MongoDB-wire servers side by side, from one run of ``bench/online_store.py``."""
    bench = report.get("benchmarks", {}).get("online_store") or {}
    result = bench.get("result")
    if not isinstance(result, Mapping) or "median" not in result:
        return []
    header = "| server | " + " | ".join(title for _, title in SERVER_COLUMNS) + " | kill -9 |"
    lines = [
        "## Online store servers, side by side (same run)",
        "",
        f"Medians over {result.get('config', {}).get('runs', '?')} interleaved runs of "
        "`bench/online_store.py`, "
        f"{result.get('documents', '?'):,} documents of "
        f"{result.get('counters_per_document', '?')} counters; CAS = `apply_increments` of "
        "existing documents (FerretDB: bulks of 10, it scans per statement). kill -9: "
        "trials that lost an acknowledged batch.",
        "",
        header,
        "| --- " * (len(SERVER_COLUMNS) + 2) + "|",
    ]
    for server, numbers in result["median"].items():
        cells = []
        for key, _ in SERVER_COLUMNS:
            value = numbers.get(key)
            cells.append(("yes" if value else "no") if isinstance(value, bool) else _fmt(value))
        kills = numbers.get("durability_kill_9")
        kill = f"{kills['trials_with_lost_writes']} of {kills['trials']}" if kills else "n/a"
        lines.append(f"| {server} | " + " | ".join(cells) + f" | {kill} |")
    return [*lines, ""]


def _numbers(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def _generic_rows(name: str, result: Mapping[str, Any]) -> list[Row]:
    """Targets (``*_met`` booleans) and the headline or median numbers of any benchmark."""
    rows: list[Row] = []
    raw = result.get("targets")
    targets: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    for key, met in targets.items():
        if key.endswith("_met") and isinstance(met, bool):
            base = key[: -len("_met")]
            rows.append(Row(name, base, "", str(targets.get(base, "")), met))
    summary = next((v for k, v in result.items() if k.startswith(("headline", "median"))), None)
    for key, value in list(_numbers(summary))[:12]:
        rows.append(Row(name, key, _fmt(value)))
    if not rows:
        rows.append(Row(name, "(no headline or targets in its JSON)", ""))
    return rows


def headline_rows(report: Mapping[str, Any]) -> list[Row]:
    """Every benchmark's headline numbers and targets; failed ones as one row each."""
    rows: list[Row] = []
    for name, bench in report.get("benchmarks", {}).items():
        result = bench.get("result")
        if bench.get("status") != "ok" or not isinstance(result, Mapping):
            rows.append(Row(name, "status", str(bench.get("status", "unknown")), "", False))
            continue
        try:
            if name == "feature_read":
                rows += _feature_read_rows(result)
            elif name == "streaming":
                rows += _streaming_rows(result)
            elif name == "online_store":
                rows += _online_store_rows(result)
            else:
                rows += _generic_rows(name, result)
        except (KeyError, TypeError):
            rows += _generic_rows(name, result)
    return rows


def _met_text(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: ""}[met]


def markdown(report: Mapping[str, Any], plots: list[str] | None = None) -> str:
    """The README of ``bench/results``: headline table, failures, usage, plots."""
    lines = [
        "# Benchmark results",
        "",
        "<!-- Written by bench/run_all.py (bench/report.py) from all.json; do not edit. -->",
        "",
        f"Generated {report.get('generated_at', 'n/a')} by `bench/run_all.py"
        + (
            " --report-only` from the JSON files the benchmarks saved earlier"
            if report.get("mode") == "report-only"
            else "` (`make bench`), running the benchmarks"
        )
        + ". Every number below is measured, taken from the JSON a benchmark wrote; "
        "the machine:",
        "",
        f"`{_machine_line(report.get('machine') or {})}`",
        "",
        "| benchmark | metric | value | target | met? |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in headline_rows(report):
        lines.append(
            f"| {row.benchmark} | {row.metric} | {row.value} | {row.target} "
            f"| {_met_text(row.met)} |"
        )
    lines.append("")
    lines += online_store_table(report)
    runs = [
        f"| {name} | {bench.get('status')} | {_fmt(bench.get('seconds'), 's')} "
        f"| {bench.get('source', '')} |"
        for name, bench in report.get("benchmarks", {}).items()
    ]
    lines += ["## Runs", "", "| benchmark | status | wall time | numbers from |"]
    lines += ["| --- | --- | --- | --- |", *runs, ""]
    for name, bench in report.get("benchmarks", {}).items():
        if bench.get("status") not in ("ok", None) and bench.get("stderr_tail"):
            lines += [f"### {name}: {bench['status']}", "", "```", bench["stderr_tail"], "```", ""]
    lines += _usage_section(report)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


def _machine_line(machine: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in machine.items() if k in ("cpus", "memory_mb", "platform")]
    return ", ".join(parts) or "unknown"


def _usage_section(report: Mapping[str, Any]) -> list[str]:
    table: list[tuple[str, str, Mapping[str, Any]]] = []
    idle = report.get("idle_usage")
    if isinstance(idle, Mapping):
        for component, s in idle.get("summary", {}).items():
            table.append(("idle", component, s))
    for name, bench in report.get("benchmarks", {}).items():
        usage = bench.get("usage")
        if isinstance(usage, Mapping):
            for component, s in usage.get("summary", {}).items():
                table.append((f"during {name}", component, s))
    if not table:
        return []
    lines = [
        "## CPU and memory per component",
        "",
        "CPU in % of one core (mean / max over 1 s samples); memory in MB (RSS mean / max, "
        "PSS max: shared pages split). From `bench/usage.py` (`/proc`).",
        "",
        "| when | component | CPU mean | CPU max | RSS mean | RSS max | PSS max | processes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for when, component, s in table:
        lines.append(
            f"| {when} | {component} | {_fmt(s.get('cpu_percent_mean'))} "
            f"| {_fmt(s.get('cpu_percent_max'))} | {_fmt(s.get('rss_mb_mean'))} "
            f"| {_fmt(s.get('rss_mb_max'))} | {_fmt(s.get('pss_mb_max'))} "
            f"| {s.get('processes_max', '')} |"
        )
    return [*lines, ""]


# -- plots ------------------------------------------------------------------------------


def _sample_lists(
    tree: Any, words: tuple[str, ...], prefix: str = ""
) -> Iterator[tuple[str, list[float]]]:
    """Lists of at least 5 numbers whose key mentions one of ``words``."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if (
                isinstance(value, list)
                and len(value) >= 5
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and any(w in str(key).lower() for w in words)
            ):
                yield path, [float(v) for v in value]
            else:
                yield from _sample_lists(value, words, path)


def _results(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        name: bench["result"]
        for name, bench in report.get("benchmarks", {}).items()
        if bench.get("status") == "ok" and isinstance(bench.get("result"), Mapping)
    }


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def plot_latency(report: Mapping[str, Any], path: Path) -> None:
    """Latency distributions: raw samples as CDFs where a JSON has them, else p50/p99 per run."""
    results = _results(report)
    samples = [
        (f"{name}: {key}", values)
        for name, result in results.items()
        for key, values in _sample_lists(result, ("latenc", "_ms"))
    ]
    fr = results.get("feature_read")
    panels = (1 if samples else 0) + (len(fr.get("scenarios", [])) if fr else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 4), squeeze=False)
    ax_iter = iter(axes[0])
    if samples:
        ax = next(ax_iter)
        for label, values in samples:
            ordered = sorted(values)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
        ax.set(xlabel="latency (ms)", ylabel="fraction of requests", title="latency CDF")
        ax.legend(fontsize=7)
    for scenario in fr.get("scenarios", []) if fr else []:
        ax = next(ax_iter)
        variants = list(scenario["median_over_runs"])
        for i, variant in enumerate(variants):
            for j, key in enumerate(("p50_ms", "p99_ms")):
                values = [run[variant][key] for run in scenario.get("runs", [])]
                x = i * 3 + j
                median = scenario["median_over_runs"][variant][key]
                ax.bar(x, median, color=("C0", "C1")[j], label=key if i == 0 else None)
                ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks([i * 3 + 0.5 for i in range(len(variants))], variants)
        ax.set(
            ylabel="ms (bar: median of runs, dots: runs)",
            title=f"feature_read, {scenario['setup']['catalogue_items']} items",
        )
        ax.legend(fontsize=7)
    if panels == 0:
        _empty(axes[0][0], "no latency numbers in the results")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_freshness(report: Mapping[str, Any], path: Path) -> None:
    """Freshness over time where samples exist, else per-run p50/p99 and lower bounds."""
    results = _results(report)
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [
        (f"{name}: {key}", values)
        for name, result in results.items()
        for key, values in _sample_lists(result, ("freshness",))
    ]
    streaming = results.get("streaming")
    if series:
        for label, values in series:
            ax.plot(range(len(values)), values, marker=".", label=label)
        ax.set(xlabel="marker (in send order)", ylabel="seconds until visible")
        ax.legend(fontsize=7)
    elif streaming and streaming.get("runs"):
        keys = (
            "freshness_p50_s",
            "freshness_p99_s",
            "freshness_p50_lower_bound_s",
            "freshness_p99_lower_bound_s",
        )
        runs = streaming["runs"]
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            values = [r.get(key) or 0.0 for r in runs]
            xs = [i + k * width for i in range(len(runs))]
            ax.bar(xs, values, width=width, label=key.replace("freshness_", ""))
        target = (streaming.get("targets") or {}).get("freshness_p99_s")
        if target:
            ax.axhline(target, color="red", linestyle="--", label=f"target p99 {target} s")
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(runs))], [f"run {r['run']}" for r in runs]
        )
        ax.set(ylabel="seconds", title="streaming freshness per run (no per-marker samples)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no freshness numbers in the results")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_throughput(report: Mapping[str, Any], path: Path) -> None:
    """Streaming produced vs processed events/s per run (and per-batch rows if recorded)."""
    results = _results(report)
    streaming = results.get("streaming")
    fig, ax = plt.subplots(figsize=(7, 4))
    if streaming and streaming.get("runs"):
        runs = streaming["runs"]
        keys = ("produced_events_per_s", "processed_events_per_s", "capacity_events_per_s")
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            values = [r.get(key) or 0.0 for r in runs]
            ax.bar([i + k * width for i in range(len(runs))], values, width=width, label=key)
        target = (streaming.get("targets") or {}).get("events_per_s")
        if target:
            ax.axhline(target, color="red", linestyle="--", label=f"target {target:g}/s")
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(runs))], [f"run {r['run']}" for r in runs]
        )
        ax.set(
            ylabel="events/s", title="streaming throughput (0 = no batch finished in the window)"
        )
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no throughput numbers in the results")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_usage(report: Mapping[str, Any], path: Path) -> None:
    """CPU and RSS per component: idle and during each benchmark."""
    columns: list[tuple[str, Mapping[str, Any]]] = []
    idle = report.get("idle_usage")
    if isinstance(idle, Mapping) and idle.get("summary"):
        columns.append(("idle", idle["summary"]))
    for name, bench in report.get("benchmarks", {}).items():
        usage = bench.get("usage")
        if isinstance(usage, Mapping) and usage.get("summary"):
            columns.append((name, usage["summary"]))
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if not columns:
        _empty(cpu_ax, "no usage measured")
        mem_ax.set_axis_off()
    else:
        components = sorted({c for _, s in columns for c in s})
        width = 0.8 / len(columns)
        for k, (label, summary) in enumerate(columns):
            xs = [i + k * width for i in range(len(components))]
            cpu = [summary.get(c, {}).get("cpu_percent_mean", 0.0) for c in components]
            rss = [summary.get(c, {}).get("rss_mb_max", 0.0) for c in components]
            cpu_ax.bar(xs, cpu, width=width, label=label)
            mem_ax.bar(xs, rss, width=width, label=label)
        ticks = [i + 0.4 - width / 2 for i in range(len(components))]
        for ax in (cpu_ax, mem_ax):
            ax.set_xticks(ticks, components, rotation=30)
            ax.legend(fontsize=7)
        cpu_ax.set(ylabel="% of one core (mean)", title="CPU per component")
        mem_ax.set(ylabel="MB (RSS max)", title="memory per component")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the four plots and ``README.md`` into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in zip(
        PLOTS, (plot_latency, plot_freshness, plot_throughput, plot_usage), strict=True
    ):
        plot(report, out_dir / name)
        written.append(out_dir / name)
    readme = out_dir / "README.md"
    readme.write_text(markdown(report, [p.name for p in written]))
    return [*written, readme]
