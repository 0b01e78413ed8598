"""``twotier experiments`` on a real embedded chdb: the per-group table and its JSON.

Recommendations of MovieLens' ``ranker_ab`` experiment are logged as serving logs them, a
known share of them is viewed afterwards (treatment far more often), the day is
attributed, and the command reads the result the way a person runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotier.config import Settings, load_settings
from twotier.experiments import assign
from twotier.infra.service import Service
from twotier.offline_store import open_offline_store
from twotier.readout import attribute, day_start_ms

PROJECT = "movielens"
DAY = "2026-12-01"
USERS = 400


def _twotier(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    return subprocess.run(
        [sys.executable, "-m", "twotier.cli", *args],
        env={**clean, "COLUMNS": "80", "TWOTIER_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose offline store holds one attributed day of ``ranker_ab``."""
    folder = tmp_path_factory.mktemp("experiments-cli")
    settings = load_settings(data_dir=folder)
    experiment = settings.project_features(PROJECT).experiments[0]
    rng = np.random.default_rng(7)
    start = day_start_ms(DAY) + 3_600_000
    rows = []
    for u in range(USERS):
        user = f"u{u}"
        group = assign(PROJECT, experiment, user)
        p_hit = 0.6 if group == "treatment" else 0.1
        for k in range(5):
            item, ts = f"i{(u * 7 + k) % 300}", start + u * 1000 + k
            rows.append(
                {
                    "event_id": f"rec-{u}-{k}",
                    "user_id": user,
                    "item_id": item,
                    "action": "recommendation",
                    "value": 1.0,
                    "ts": ts,
                    "context": {
                        "request_id": f"req-{u}",
                        "rank": str(k),
                        "experiment": experiment.name,
                        "group": group,
                        "shuffle": str(experiment.shuffle),
                    },
                }
            )
            if rng.random() < p_hit:
                rows.append(
                    {
                        "event_id": f"view-{u}-{k}",
                        "user_id": user,
                        "item_id": item,
                        "action": "view",
                        "value": 1.0,
                        "ts": ts + 60_000,
                        "context": {},
                    }
                )
    with open_offline_store(settings) as store:
        store.ensure_tables(PROJECT)
        store.insert_events(PROJECT, pd.DataFrame(rows))
        attribute(store, PROJECT, settings.project_features(PROJECT), [DAY])
    return folder


def test_the_table_shows_each_group_against_control_and_fits_80_columns(
    data_dir: Path,
) -> None:
    result = _twotier("experiments", "--project", PROJECT, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    text = result.stdout
    assert "ranker_ab (shuffle 1): hits per recommendation" in text
    assert "against control" in text and "treatment" in text
    assert "95% interval" in text
    assert "concluded" in text or "running" in text


def test_json_carries_the_significant_difference_and_no_nan(data_dir: Path) -> None:
    result = _twotier("experiments", "--project", PROJECT, "--json", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    (found,) = json.loads(result.stdout)  # strict JSON: NaN would not parse as null
    assert found["experiment"] == "ranker_ab" and found["control"] == "control"
    rows = {(r["group"], r["metric"]): r for r in found["rows"]}
    control, treatment = rows[("control", "hit_rate")], rows[("treatment", "hit_rate")]
    assert control["low"] is None  # control has no interval against itself
    assert control["users"] + treatment["users"] == USERS
    assert control["recommendations"] + treatment["recommendations"] == USERS * 5
    assert treatment["value"] == pytest.approx(0.6, abs=0.06)
    assert control["value"] == pytest.approx(0.1, abs=0.04)
    assert treatment["low"] > 0 and treatment["p_value"] < 0.001
    assert found["concluded"] is True and "differs from control" in found["reason"]


def test_bad_experiment_or_metric_is_one_line_and_exit_2(data_dir: Path) -> None:
    for args, needle in (
        (["--experiment", "nope"], "has no experiment 'nope'"),
        (["--metric", "nope"], "unknown metric 'nope'"),
    ):
        result = _twotier("experiments", "--project", PROJECT, *args, data_dir=data_dir)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert needle in result.stderr


def test_shuffle_refuses_a_running_experiment_then_forced_moves_on(
    settings: Settings, online_server: Service, tmp_path: Path
) -> None:
    env = {**settings.to_env(), "TWOTIER_DATA_DIR": str(tmp_path)}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "twotier.cli", "experiments", "shuffle", *args],
            env={**clean, "COLUMNS": "80", **env},
            capture_output=True,
            text=True,
            timeout=180,
        )

    refused = run("ranker_ab", "--project", PROJECT)  # nothing served: too few users
    assert refused.returncode == 1, refused.stderr
    assert "has not concluded" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = run("ranker_ab", "--project", PROJECT, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "ranker_ab: shuffle 1 -> 2 from " in forced.stdout
    assert "UTC (forced); serving switches within 1 s" in forced.stdout
    again = run("ranker_ab", "--project", PROJECT, "--force")
    assert "shuffle 2 -> 3" in again.stdout, again.stderr
