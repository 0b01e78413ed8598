"""Benchmark: one full retrain of MovieLens small through the Dagster asset graph.

Starts its own MLflow server through the project's infra (own data folder and port),
loads MovieLens small (100,836 ratings) into a fresh embedded chdb once (not timed: that
is ingestion), then times, ``--runs`` times, one in-process run of the asset graph from
the features on:

    feature_snapshots → training_set_tier1 / training_set_tier2_ranker (every month)
    → tier1_candidates (ALS, ONNX, parity, evaluate, register)
    → tier2_ranker (XGBoost, ONNX, parity, two-tier evaluation, register)
    → promotion (champion of both tiers; serving not called)

Each step's wall time comes from the run's step stats, and the model assets' own
breakdown (train / export / parity / evaluate / register) from their metadata. Prints
JSON (per run and the median over runs) and writes it to ``bench/results/retrain.json``.

Usage::

    .venv/bin/python bench/retrain.py [--runs 3] [--limit N] [--port 30290]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import dagster as dg
from result_file import emit

from twotier.config import ClickHouseOfflineStoreConfig, Settings, load_settings
from twotier.infra.stack import make_service
from twotier.items import items_frame, movielens_items
from twotier.naming import model_name
from twotier.offline_store import events_frame, open_offline_store
from twotier.pipelines.materialize import materialization_metadata, materialize_project
from twotier.pipelines.resources.serving import ServingResource
from twotier.registry import resolve
from twotier.replay import movielens_events

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "retrain.json"
DATASET = REPO.parent / "shared" / "datasets" / "movielens-small"
PROJECT = "movielens"
SELECTION = [
    "feature_snapshots",
    "training_set_tier1",
    "training_set_tier2_ranker",
    "tier1_candidates",
    "tier2_ranker",
    "promotion",
]
FIRST, LAST = "1996-03-01", "2018-09-01"  # the months of MovieLens small


def _step_seconds(
    result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance
) -> dict[str, float]:
    stats = instance.get_run_step_stats(result.run_id)
    out = {}
    for s in stats:
        if s.start_time is not None and s.end_time is not None:
            out[s.step_key.removeprefix(f"{PROJECT}__")] = round(s.end_time - s.start_time, 3)
    return out


def _one_run(settings: Settings, instance: dg.DagsterInstance) -> dict[str, Any]:
    serving = ServingResource(
        url="http://127.0.0.1:9", admin_token="-", deploy_after_promotion=False
    )
    started = time.perf_counter()
    result = materialize_project(
        settings,
        PROJECT,
        selection=SELECTION,
        partition_range=(FIRST, LAST),
        instance=instance,
        resources={"serving": serving},
    )
    wall = time.perf_counter() - started
    tier1 = materialization_metadata(result, PROJECT, "tier1_candidates")
    tier2 = materialization_metadata(result, PROJECT, "tier2_ranker")
    uri = settings.mlflow.uri
    for name, meta in (
        (model_name(PROJECT, "tier1", "candidates"), tier1),
        (model_name(PROJECT, "tier2", "ranker"), tier2),
    ):
        assert resolve(uri, name, "champion").version == meta["version"], name
    return {
        "wall_seconds": round(wall, 3),
        "steps_seconds": _step_seconds(result, instance),
        "tier1_breakdown_seconds": tier1["seconds"],
        "tier2_breakdown_seconds": tier2["seconds"],
        "metrics": {
            "tier2_auc": round(float(str(tier2["auc"])), 4),
            "two_tier_ndcg_at_10": round(float(str(tier2["two_tier_ndcg_at_10"])), 4),
            "popularity_ndcg_at_10": round(float(str(tier2["popularity_ndcg_at_10"])), 4),
            "two_tier_recall_at_100": round(float(str(tier2["two_tier_recall_at_100"])), 4),
            "popularity_recall_at_100": round(float(str(tier2["popularity_recall_at_100"])), 4),
            "tier1_parity_max_abs_diff": float(str(tier1["parity_max_abs_diff"])),
            "tier2_parity_max_abs_diff": float(str(tier2["parity_max_abs_diff"])),
        },
        "versions": {"tier1": tier1["version"], "tier2": tier2["version"]},
    }


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    names = runs[0][key].keys()
    return {n: round(statistics.median(float(r[key][n]) for r in runs), 3) for n in names}


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data_dir,
        cache_dir=REPO / ".twotier" / "cache",
        mlflow={"port": args.port},
    )
    settings = settings.model_copy(
        update={"offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{data_dir / 'offline'}")}
    )
    service = make_service("mlflow", settings)
    service.start(print)
    try:
        started = time.perf_counter()
        with open_offline_store(settings) as store:
            store.ensure_tables(PROJECT)
            frame = events_frame(movielens_events(PROJECT, Path(args.dataset), limit=args.limit))
            store.insert_events(PROJECT, frame)
            # What the items_offline asset copies from the online store: the movies.
            store.insert_items(PROJECT, items_frame(movielens_items(Path(args.dataset))))
        print(f"loaded {len(frame)} events in {time.perf_counter() - started:.1f} s", flush=True)
        runs = []
        with dg.DagsterInstance.ephemeral() as instance:
            for r in range(args.runs):
                runs.append(_one_run(settings, instance))
                print(f"run {r + 1}/{args.runs}: {json.dumps(runs[-1])}", flush=True)
    finally:
        service.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "benchmark": "one full retrain on MovieLens small through the Dagster asset graph",
        "scope": " → ".join(SELECTION) + " (in one in-process run; events already loaded)",
        "setup": {
            "ratings": args.limit or 100836,
            "events": len(frame),
            "partitions": f"{FIRST}..{LAST} (monthly)",
            "runs": args.runs,
            "defaults": "tier one: ALS 16 factors x 8 iterations, top-100; tier two: XGBoost "
            "60 trees depth 4; evaluation on up to 1000 hold-out users",
        },
        "median_over_runs": {
            "wall_seconds": round(statistics.median(r["wall_seconds"] for r in runs), 3),
            "steps_seconds": _median(runs, "steps_seconds"),
            "tier1_breakdown_seconds": _median(runs, "tier1_breakdown_seconds"),
            "tier2_breakdown_seconds": _median(runs, "tier2_breakdown_seconds"),
        },
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "shared": "2 cores shared with 4 other agents' test stacks while measuring",
        },
        "stores": "embedded chdb (offline store), MLflow server on loopback (SQLite backend)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N ratings.")
    parser.add_argument("--port", type=int, default=30290, help="Port of the bench's MLflow.")
    parser.add_argument("--dataset", default=str(DATASET))
    parser.add_argument("--data-dir", default=str(REPO / ".twotier-bench-retrain"))
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    result = run(args)
    emit(result, RESULTS, save=not args.no_write)
    if not args.no_write:
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
