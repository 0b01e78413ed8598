"""bench/report.py and bench/run_all.py: table, plots and robustness, on the committed JSONs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import report  # noqa: E402 - bench/ is a folder of scripts, not a package
import run_all  # noqa: E402
import usage  # noqa: E402

SAVED = REPO / "bench" / "results"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _document(benchmarks: dict[str, Any], idle: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "generated_at": "now",
        "machine": {"cpus": 2},
        "idle_usage": idle,
        "benchmarks": benchmarks,
    }


@pytest.fixture()
def saved() -> dict[str, Any]:
    """The committed benchmark results, as run_all --report-only collects them."""
    records = run_all.collect_saved(SAVED, ["feature_read", "streaming"])
    assert set(records) == {"feature_read", "streaming"}
    return records


def test_table_has_the_committed_headline_numbers_and_targets(saved: dict[str, Any]) -> None:
    feature_read = json.loads((SAVED / "feature_read.json").read_text())
    streaming = json.loads((SAVED / "streaming.json").read_text())
    rows = report.headline_rows(_document(saved))
    by_metric = {(r.benchmark, r.metric): r for r in rows}

    p99 = by_metric[("feature_read", f"matrix p99 ({feature_read['headline']['scenario']} items)")]
    assert p99.value == f"{feature_read['headline']['matrix']['p99_ms']:,.1f} ms"
    assert p99.met is feature_read["targets"]["p99_met"]
    ratio = by_metric[("feature_read", "matrix / bare find (p50, p99)")]
    assert ratio.met is feature_read["targets"]["ratio_met"]
    fresh = by_metric[("streaming", "freshness p99 (lower bound)")]
    assert fresh.met is streaming["targets"]["freshness_p99_met"]
    assert fresh.target == "<= 5 s"

    text = report.markdown(_document(saved), ["latency.png"])
    assert "| feature_read | matrix p99 (20000 items) |" in text
    assert text.count("**missed**") == sum(r.met is False for r in rows)
    assert "![latency](latency.png)" in text


def test_feature_read_rows_show_the_reader_cold_and_warm_when_measured() -> None:
    result = json.loads((SAVED / "feature_read.json").read_text())
    for key in ("reader_cold", "reader_warm", "cold_ratio_p99"):  # a result from before them
        result["headline"].pop(key, None)
    assert not [r for r in report._feature_read_rows(result) if r.metric.startswith("reader")]
    timing = {"p50_ms": 1.0, "p99_ms": 1.5, "mean_ms": 1.1}
    result["headline"] |= {"reader_cold": timing, "reader_warm": timing, "cold_ratio_p99": 1.2}
    result["targets"] |= {
        "cold_p99_ms": "reader_cold p99 <= 10.0 ms",
        "cold_p99_met": True,
        "warm_p99_ms": "reader_warm p99 <= 2.0 ms",
        "warm_p99_met": True,
        "cold_ratio": "reader_cold/bare_find p99 <= 1.5",
        "cold_ratio_met": True,
    }
    where = f"{result['headline']['scenario']} items"
    rows = {r.metric: r for r in report._feature_read_rows(result)}
    assert rows[f"reader cold p99 ({where})"] == report.Row(
        "feature_read", f"reader cold p99 ({where})", "1.5 ms", "reader_cold p99 <= 10.0 ms", True
    )
    assert rows[f"reader warm p99 ({where})"].target == "reader_warm p99 <= 2.0 ms"
    assert rows["reader cold / bare find (p99)"].value == "1.2"


def test_write_report_writes_four_pngs_and_the_readme(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    idle = json.loads((SAVED / "usage_idle.json").read_text())
    written = report.write_report(_document(saved, idle), tmp_path)
    assert [p.name for p in written] == [*report.PLOTS, "README.md"]
    for name in report.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    readme = (tmp_path / "README.md").read_text()
    assert "| idle | kafka |" in readme
    assert "| idle | ray |" in readme


def test_failed_and_unknown_benchmarks_do_not_break_the_report(tmp_path: Path) -> None:
    document = _document(
        {
            "serving": {"status": "failed", "stderr_tail": "Traceback\nBoom: port busy"},
            "retrain": {
                "status": "ok",
                "result": {
                    "targets": {"minutes": "retrain <= 10 min", "minutes_met": True},
                    "headline": {"minutes": 7.5, "nested": {"auc": 0.71}},
                    "latency_ms": [1.0, 2.0, 2.5, 3.0, 9.0, 4.0],
                },
            },
            "weird": {"status": "ok", "result": {"nothing": "useful"}},
        }
    )
    rows = report.headline_rows(document)
    assert report.Row("serving", "status", "failed", "", False) in rows
    assert report.Row("retrain", "minutes", "", "retrain <= 10 min", True) in rows
    assert report.Row("retrain", "nested.auc", "0.71") in rows
    assert rows[-1].metric == "(no headline or targets in its JSON)"
    report.write_report(document, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "### serving: failed" in readme and "Boom: port busy" in readme
    assert (tmp_path / "latency.png").read_bytes().startswith(PNG_MAGIC)


def test_run_all_records_a_failing_benchmark_and_still_runs_the_next(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint('starting')\nsys.exit('bench failed: no broker on 1234')\n")
    good = tmp_path / "good.py"
    good.write_text(
        "import json, time\nprint('progress line')\ntime.sleep(1.2)\n"
        "print(json.dumps({'headline': {'x_ms': 1.5}, 'targets': {'x_met': True}}, indent=2))\n"
    )
    failed = run_all.run_benchmark("bad", bad, [], tmp_path, interval_s=0.2)
    ok = run_all.run_benchmark("good", good, [], tmp_path, interval_s=0.2)
    assert failed["status"] == "failed" and failed["returncode"] == 1
    assert "no broker on 1234" in failed["stderr_tail"] and failed["result"] is None
    assert ok["status"] == "ok" and ok["source"] == "stdout"
    assert ok["result"]["headline"] == {"x_ms": 1.5}
    assert "benchmark" in ok["usage"]["summary"]  # the script's own process was sampled
    document = run_all.build_report({"bad": failed, "good": ok}, None, tmp_path)
    assert json.loads((tmp_path / "all.json").read_text()) == document
    assert "| good | x |" in (tmp_path / "README.md").read_text()


def test_run_all_times_out_a_hung_benchmark(tmp_path: Path) -> None:
    hung = tmp_path / "hung.py"
    hung.write_text("import time\ntime.sleep(60)\n")
    record = run_all.run_benchmark("hung", hung, [], tmp_path, timeout_s=1.0, interval_s=0.2)
    assert record["status"] == "timeout" and record["seconds"] < 30


def test_bad_args_map_is_refused() -> None:
    with pytest.raises(SystemExit, match="NAME=ARGS"):
        run_all._parse_args_map(["nosuch=--x"])
    assert run_all._parse_args_map(["feature_read=--runs 1 --no-save"]) == {
        "feature_read": ["--runs", "1", "--no-save"]
    }


def test_last_json_on_stdout() -> None:
    text = 'run 1: {"a": 1}\n{\n  "b": 2\n}\n'
    assert run_all._last_json(text) == {"b": 2}
    assert run_all._last_json("no json here\n") is None


def test_usage_classifies_stack_processes() -> None:
    assert usage.classify("/usr/bin/java -Xmx384m ... kafka.Kafka /x/server.properties") == "kafka"
    assert usage.classify("/c/ferretdb/v1.24.2/ferretdb --listen-addr=127.0.0.1:1") == "ferretdb"
    secantus = "/c/secantusdb/0.5.3-beta.196/bin/secantusd-rs --config=/d/secantusd.toml"
    assert usage.classify(secantus) == "secantusdb"
    assert usage.classify("python -m mlflow server --host 127.0.0.1") == "mlflow"
    assert usage.classify("python3 -m dagster api grpc --lazy-load-user-code") == "dagster"
    assert usage.classify("/v/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet") == "ray"
    assert usage.classify("python -m twotier.feature_jobs online --project memes") == "spark"
    assert usage.classify("python bench/feature_read.py --runs 1") is None
    summary = usage.summarize(
        [
            {
                "components": {
                    "kafka": {"cpu_percent": 2.0, "rss_mb": 300.0, "pss_mb": 290.0, "processes": 1}
                }
            },
            {
                "components": {
                    "kafka": {"cpu_percent": 4.0, "rss_mb": 310.0, "pss_mb": None, "processes": 1}
                }
            },
        ]
    )
    assert summary["kafka"]["cpu_percent_mean"] == 3.0
    assert summary["kafka"]["rss_mb_max"] == 310.0 and summary["kafka"]["pss_mb_max"] == 290.0


def test_online_store_servers_are_side_by_side_in_one_table() -> None:
    numbers = {
        "find_in_500_p50_ms": 5.0,
        "find_in_500_p99_ms": 9.0,
        "get_groups_user_plus_500_p99_ms": 10.0,
        "cas_updates_per_s_j_true": 8000.0,
        "cas_updates_per_s_j_false": 9000.0,
        "change_streams": True,
        "transactions": True,
    }
    result = {
        "config": {"runs": 3},
        "documents": 20000,
        "counters_per_document": 10,
        "median": {
            "secantusdb --sync-on-commit": {
                **numbers,
                "durability_kill_9": {"trials": 15, "trials_with_lost_writes": 0},
            },
            "ferretdb v1 sqlite": {**numbers, "transactions": False, "durability_kill_9": None},
        },
    }
    report_doc = {"benchmarks": {"online_store": {"status": "ok", "result": result}}}
    table = report.online_store_table(report_doc)
    rows = [
        line for line in table if line.startswith("| secantusdb") or line.startswith("| ferret")
    ]
    assert len(rows) == 2
    assert rows[0].endswith("| yes | yes | 0 of 15 |")
    assert rows[1].endswith("| yes | no | n/a |")
    headline = report.headline_rows(report_doc)
    kill = next(r for r in headline if "kill -9" in r.metric)
    assert (kill.value, kill.met) == ("0 of 15", True)
