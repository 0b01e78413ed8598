"""bench/readout.py at a tiny scale: its generator, the timed readout and the JSON it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import report  # noqa: E402 - bench/ is a folder of scripts, not a package
import run_all  # noqa: E402


def test_readout_bench_runs_small_and_prints_its_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "readout.py"),
            "--scale",
            "0.002",
            "--runs",
            "1",
            "--days",
            "2",
            "--no-save",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = run_all._last_json(done.stdout)
    assert result is not None
    head = result["headline"]
    assert {
        "total_seconds",
        "attribution_seconds",
        "readout_seconds",
        "scan_seconds",
        "tenth_total_seconds",
        "peak_rss_mb",
        "ratio_to_scan",
        "ratio_to_tenth",
        "recommendations",
        "events",
    } <= set(head)
    assert head["recommendations"] == 2000  # 200 requests x 10 items
    assert head["events"] == 2000 + 20_000
    assert isinstance(result["targets"]["total_seconds_met"], bool)
    run = result["runs"][0]
    assert run["attributed"]["recommendations"] == 2000
    assert 0 < run["attributed"]["hits"] < 2000
    assert set(run["readout"]["groups"]) == {"control", "treatment"}
    assert run["chdb_engine_version"]
    assert not (tmp_path / "data").exists()  # the bench removes its data folder
    rows = report.headline_rows(
        {"benchmarks": {"readout": {"status": "ok", "result": result}}, "machine": {}}
    )
    assert any(r.metric == "total_seconds" and r.met is not None for r in rows)
