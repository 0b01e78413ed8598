"""Fault tests: what each kill -9 costs, written to ``bench/results/faults.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"


@pytest.fixture(scope="session")
def fault_report() -> Iterator[dict[str, dict[str, Any]]]:
    """Per fault, what it cost; merged into ``bench/results/faults.json`` at the end."""
    report: dict[str, dict[str, Any]] = {}
    yield report
    if not report:
        return
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.setdefault("faults", {}).update(report)
    merged["note"] = (
        "Each fault is a SIGKILL of one component during streaming or serving on the "
        "local stack (2 shared cores); seconds are wall time, measured once per run."
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
