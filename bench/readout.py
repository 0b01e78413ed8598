"""Benchmark: the experiment readout over 1 million recommendations and 10 million events.

Issue 13's target: attribution of every serve day plus the readout, over 1,000,000 logged
``recommendation`` events and 10,000,000 other events, in at most 2 minutes on this machine
with the embedded chdb offline store.

A child process synthesises the data with numpy (not timed with the readout): ``--requests``
requests of ``--k`` items over ``--days`` serve days (``rec-<request>-<rank>`` events whose
context has the request, rank, experiment, group, shuffle and both model versions, as
serving logs them), users split by ``twotier.experiments.assign`` into the two groups of
one experiment; each served item is hit (a later ``view``, sometimes a ``smile``) with a
probability that is 10% higher in ``treatment`` than in ``control``, and the rest of the
``--events`` are background views and smiles of random users on Zipf-popular items over
the serve days and one window after. Rows go in by ``insert_frame`` in batches of 1M (ids
are unique by construction), then the events table is merged (``OPTIMIZE ... FINAL``).

Each of ``--runs`` runs is a fresh child process (its own chdb engine, so its peak RSS is
the readout's, not the generator's) that times:

* ``baseline``: ``SELECT count() FROM <events> FINAL`` (one deduplicating scan of the
  sorting key), the reference the readout is measured against (``ratio_to_baseline``);
* ``attribution``: ``twotier.readout.attribute`` of each serve day (the whole day loop);
* ``readout``: what the ``experiment_readout`` asset computes for those days: per day the
  day's ``per_user`` + ``compare`` and the cumulative ``readout``, both ``write_readout``,
  then ``daily`` and ``group_intervals`` over the generation (no plot, no MLflow).

Prints JSON (per run, the median over runs, the target) and writes it to
``bench/results/readout.json``.

Usage::

    .venv/bin/python bench/readout.py [--runs 3] [--scale 1.0] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from result_file import emit

from twotier import readout as ro
from twotier.config import ClickHouseOfflineStoreConfig, Settings, load_settings
from twotier.experiments import Experiment, ExperimentGroup, assign, record_shuffle
from twotier.features.builtin import builtin_projects
from twotier.features.spec import ProjectFeatures
from twotier.offline_store import open_offline_store
from twotier.offline_store.base import EVENT_COLUMNS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "readout.json"
PROJECT = "bench"
TENTH = "bench_tenth"
"""The same data at a tenth of the size, read out in the same run (the scaling baseline)."""
SCAN = (
    "SELECT count() AS n, sum(length(user_id) + length(item_id)) AS chars, max(ts) AS last "
    "FROM {events} FINAL WHERE action IN ('recommendation', 'view', 'smile')"
)
"""The scan baseline: every row's deduplication key and join columns, read once."""
FIRST_DAY = "2026-11-02"
TARGET_S = 120.0
BATCH = 1_000_000
HIT_RATE = {"control": 0.08, "treatment": 0.088}
"""Probability that a served item gets its own later view (background hits come on top)."""
SMILE_SHARE = 0.35
MEAN_DELAY_MS = 2 * 3_600_000
EXPERIMENT = Experiment(
    name="ranker_ab",
    salt="bench",
    groups=(
        ExperimentGroup(name="control", share=0.5, alias="champion"),
        ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
    ),
)


def bench_settings(data_dir: Path) -> Settings:
    """The test settings with an embedded chdb offline store under ``data_dir``."""
    settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data_dir,
        cache_dir=REPO / ".twotier" / "cache",
    )
    return settings.model_copy(
        update={"offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{data_dir / 'offline'}")}
    )


def bench_features() -> ProjectFeatures:
    """A project declaration running ``EXPERIMENT`` (default readout settings)."""
    return builtin_projects()["movielens"].model_copy(update={"experiments": (EXPERIMENT,)})


def serve_days(days: int) -> list[str]:
    first = ro.day_start_ms(FIRST_DAY)
    return [ro.day_key(first + d * ro.DAY_MS) for d in range(days)]


def _ids(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, numbers.astype(str)).astype(object)


def _zipf_items(rng: np.random.Generator, n_items: int, size: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    return np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(size))


def _frame(
    event_id: np.ndarray,
    user_id: np.ndarray,
    item_id: np.ndarray,
    action: np.ndarray,
    ts: np.ndarray,
    context: list[dict[str, str]],
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "event_id": event_id,
            "user_id": user_id,
            "item_id": item_id,
            "action": action,
            "value": np.ones(len(event_id)),
            "ts": ts.astype(np.int64),
            "context": context,
        }
    )
    return frame.loc[:, list(EVENT_COLUMNS)]


def generate_all(args: argparse.Namespace) -> dict[str, Any]:
    """The full data set (``PROJECT``) and the one at a tenth of its size (``TENTH``)."""
    return {
        PROJECT: generate(args, PROJECT, args.scale),
        TENTH: generate(args, TENTH, args.scale / 10),
    }


def generate(args: argparse.Namespace, project: str, scale: float) -> dict[str, Any]:
    """Synthesise and insert the recommendations and events (see the module doc)."""
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n_req = max(10, round(args.requests * scale))
    n_events = max(100, round(args.events * scale))
    n_users = max(50, round(args.users * scale))
    k, n_items = args.k, args.items
    lo = ro.day_start_ms(FIRST_DAY)
    span = args.days * ro.DAY_MS
    users = _ids("u", np.arange(n_users))
    items = _ids("i", np.arange(n_items))
    groups = np.array([assign(project, EXPERIMENT, str(u)) for u in users], dtype=object)
    # Requests, and k distinct items each (a Zipf-popular first item, then a fixed stride).
    req_ts = lo + np.sort(rng.integers(0, span, n_req))
    req_user = rng.integers(0, n_users, n_req)
    first = _zipf_items(rng, n_items, n_req)
    rec_item = (first[:, None] + np.arange(k)[None, :] * 37) % n_items
    rank = np.tile(np.arange(k), n_req)
    rec_user = np.repeat(req_user, k)
    rec_ts = np.repeat(req_ts, k)
    rec_group = groups[rec_user]
    request_ids = _ids("r", np.arange(n_req))
    rec_request = np.repeat(request_ids, k)
    rank_str = np.arange(k).astype(str).astype(object)[rank]
    shared = {
        "experiment": EXPERIMENT.name,
        "shuffle": str(EXPERIMENT.shuffle),
        "tier1_model": "bench.tier1.candidates/3",
        "tier2_model": "bench.tier2.ranker/3",
    }
    recs = _frame(
        np.char.add(
            np.char.add("rec-", rec_request.astype(str)), np.char.add("-", rank_str.astype(str))
        ).astype(object),
        users[rec_user],
        items[rec_item.ravel()],
        np.full(n_req * k, "recommendation", dtype=object),
        rec_ts,
        [
            {"request_id": r, "rank": s, "group": g, **shared}
            for r, s, g in zip(rec_request, rank_str, rec_group, strict=True)
        ],
    )
    # Each served item's own hit: more likely in treatment and at the top ranks.
    p = np.where(rec_group == "control", HIT_RATE["control"], HIT_RATE["treatment"])
    p = p * (1.45 - 0.1 * rank)
    hit = rng.random(n_req * k) < p
    hit_ts = rec_ts[hit] + 1 + rng.exponential(MEAN_DELAY_MS, int(hit.sum())).astype(np.int64)
    smile = rng.random(len(hit_ts)) < SMILE_SHARE
    n_hits = len(hit_ts) + int(smile.sum())
    hit_users = np.concatenate(
        [recs["user_id"].to_numpy()[hit], recs["user_id"].to_numpy()[hit][smile]]
    )
    hit_items = np.concatenate(
        [recs["item_id"].to_numpy()[hit], recs["item_id"].to_numpy()[hit][smile]]
    )
    hits = _frame(
        _ids("h", np.arange(n_hits)),
        hit_users,
        hit_items,
        np.array(["view"] * len(hit_ts) + ["smile"] * int(smile.sum()), dtype=object),
        np.concatenate([hit_ts, hit_ts[smile] + 30_000]),
        [{}] * n_hits,
    )
    settings = bench_settings(Path(args.data_dir))
    inserted = 0
    with open_offline_store(settings) as store:
        store.ensure_tables(project)
        table = store.table(project, "events")
        record_shuffle(store, project, EXPERIMENT, int(lo))
        for frame in (recs, hits):
            for start in range(0, len(frame), BATCH):
                store.insert_frame(table, frame.iloc[start : start + BATCH])
            inserted += len(frame)
        del recs, hits
        background = n_events - n_hits
        for start in range(0, background, BATCH):
            n = min(BATCH, background - start)
            store.insert_frame(
                table,
                _frame(
                    _ids("e", np.arange(start, start + n)),
                    users[rng.integers(0, n_users, n)],
                    items[_zipf_items(rng, n_items, n)],
                    np.where(rng.random(n) < 0.25, "smile", "view").astype(object),
                    lo + rng.integers(0, span + ro.DAY_MS, n),
                    [{}] * n,
                ),
            )
            inserted += n
        insert_s = time.perf_counter() - started
        store.command(f"OPTIMIZE TABLE {table} FINAL")
        counts = store.query_df(
            f"SELECT countIf(action = 'recommendation') AS recs, count() AS events FROM {table}"
        ).iloc[0]
        parts = store.query_df(
            "SELECT count() AS n FROM system.parts WHERE active AND database = {db:String} "
            "AND table = {t:String}",
            {"db": store.database, "t": f"{project}__events"},
        )
    return {
        "requests": n_req,
        "items_per_request": k,
        "users": n_users,
        "catalogue_items": n_items,
        "serve_days": serve_days(args.days),
        "recommendation_events": int(counts["recs"]),
        "other_events": int(counts["events"]) - int(counts["recs"]),
        "own_hit_events": n_hits,
        "rows_inserted": inserted,
        "insert_seconds": round(insert_s, 1),
        "seconds_with_optimize": round(time.perf_counter() - started, 1),
        "active_parts_after_optimize": int(parts["n"].iloc[0]),
    }


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One timed run in this process: the scan baselines, then both readouts."""
    settings = bench_settings(Path(args.data_dir))
    with open_offline_store(settings) as store:
        events = store.table(PROJECT, "events")
        version = str(store.query_df("SELECT version() AS v")["v"].iloc[0])
        counted, count_s = _timed(
            lambda: store.query_df(f"SELECT count() AS n FROM {events} FINAL")
        )
        scanned, scan_s = _timed(lambda: store.query_df(SCAN.format(events=events)))
        tenth = readout_once(store, TENTH, args)
        full = readout_once(store, PROJECT, args)
    return {
        "chdb_engine_version": version,
        "events_final_count": int(counted["n"].iloc[0]),
        "count_final_seconds": round(count_s, 3),
        "scan_seconds": round(scan_s, 3),
        "scan_rows": int(scanned["n"].iloc[0]),
        **{k: v for k, v in full.items() if k != "readout"},
        "tenth_total_seconds": tenth["total_seconds"],
        "tenth_attributed": tenth["attributed"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "readout": full["readout"],
    }


def readout_once(store: Any, project: str, args: argparse.Namespace) -> dict[str, Any]:
    """Attribution of every serve day of ``project``, then its readout (timed)."""
    features = bench_features()
    days = serve_days(args.days)
    experiment = EXPERIMENT
    end = ro.day_start_ms(days[-1]) + ro.DAY_MS
    per_day: dict[str, float] = {}
    attributed: dict[str, Any] = {}
    for day in days:
        got, per_day[day] = _timed(
            lambda day=day: ro.attribute(store, project, features, [day], now_ms=end + ro.DAY_MS)
        )
        attributed.update(got)
    parts: dict[str, float] = {"day_and_cumulative": 0.0, "write_readout": 0.0}
    started = time.perf_counter()
    shuffle, since = ro.current_generation(store, project, experiment)
    total = None
    for day in days:
        lo = ro.day_start_ms(day)
        t0 = time.perf_counter()
        users = ro.per_user(store, project, experiment, shuffle, lo, lo + ro.DAY_MS)
        one_day = ro.compare(experiment, users, shuffle, lo, lo + ro.DAY_MS)
        total = ro.readout(store, project, experiment, until_ms=lo + ro.DAY_MS)
        t1 = time.perf_counter()
        ro.write_readout(store, project, day, "day", one_day)
        ro.write_readout(store, project, day, "cumulative", total)
        parts["day_and_cumulative"] += t1 - t0
        parts["write_readout"] += time.perf_counter() - t1
    by_day, parts["daily"] = _timed(
        lambda: ro.daily(store, project, experiment, shuffle, since, end)
    )
    _, parts["group_intervals"] = _timed(
        lambda: ro.group_intervals(store, project, experiment, shuffle, since, end)
    )
    readout_s = time.perf_counter() - started
    assert total is not None and len(by_day) == len(days)
    attribution_s = sum(per_day.values())
    treatment = next(g for g in total.groups if not g.is_control)
    diff = treatment.differences[ro.PRIMARY]
    return {
        "attribution_seconds": round(attribution_s, 3),
        "readout_seconds": round(readout_s, 3),
        "total_seconds": round(attribution_s + readout_s, 3),
        "attribution_seconds_by_day": {d: round(s, 3) for d, s in per_day.items()},
        "readout_breakdown_seconds": {k: round(v, 3) for k, v in parts.items()},
        "attributed": {
            "recommendations": sum(v["recommendations"] for v in attributed.values()),
            "hits": sum(v["hits"] for v in attributed.values()),
            "smiled": sum(v["smiled"] for v in attributed.values()),
        },
        "readout": {
            "groups": {
                g.group: {
                    "users": g.users,
                    "recommendations": g.recommendations,
                    "hit_rate": round(g.values["hit_rate"], 5),
                }
                for g in total.groups
            },
            "hit_rate_difference": [
                round(diff.difference, 5),
                round(diff.low, 5),
                round(diff.high, 5),
            ],
            "p_value": float(f"{diff.p_value:.3g}"),
        },
    }


def _in_child(fn: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``fn(args)`` in a fresh (spawned) process: chdb holds one data folder per process."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, (args,))
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in runs), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    try:
        generated = _in_child(generate_all, args)
        print(f"data: {json.dumps(generated)}", flush=True)
        runs = []
        for r in range(args.runs):
            runs.append(_in_child(measure, args))
            print(f"run {r + 1}/{args.runs}: {json.dumps(runs[-1])}", flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    data = generated[PROJECT]
    keys = (
        "total_seconds",
        "attribution_seconds",
        "readout_seconds",
        "tenth_total_seconds",
        "scan_seconds",
        "count_final_seconds",
        "peak_rss_mb",
    )
    median = {key: _median(runs, key) for key in keys}
    import chdb

    return {
        "benchmark": "experiment readout: attribution of every serve day + per-group readout",
        "setup": {
            **data,
            "tenth": generated[TENTH],
            "scale": args.scale,
            "runs": args.runs,
            "experiment": f"{EXPERIMENT.name}: control 50% / treatment 50%, "
            f"own hit probability {HIT_RATE['control']} vs {HIT_RATE['treatment']} "
            "(x 1.45 - 0.1 rank), window 24 h",
            "baselines": "measured in the same process before the readout: scan_seconds = "
            + SCAN.format(events="<project>__events")
            + "; count_final_seconds = SELECT count() FROM <project>__events FINAL (one "
            "merged part, so nearly free); tenth_total_seconds = the same attribution + "
            "readout of a data set a tenth of the size (its own project, same folder)",
            "timed": "attribute() of each serve day (drop + INSERT SELECT + count), then the "
            "experiment_readout asset's computation: per day per_user/compare + readout "
            "(cumulative) + 2 write_readout, then daily() and group_intervals()",
            "process": "each run in a fresh spawned process (peak RSS = ru_maxrss of that "
            "process: the Python side and the embedded chdb engine together, both data sets)",
        },
        "headline": {
            **median,
            "ratio_to_scan": round(median["total_seconds"] / median["scan_seconds"], 1),
            "ratio_to_tenth": round(median["total_seconds"] / median["tenth_total_seconds"], 2),
            "recommendations": data["recommendation_events"],
            "events": data["recommendation_events"] + data["other_events"],
        },
        "targets": {
            "total_seconds": f"attribution + readout <= {TARGET_S:g} s",
            "total_seconds_met": median["total_seconds"] <= TARGET_S,
        },
        "median_over_runs": median,
        "notes": NOTES,
        "runs": runs,
        "chdb": {"engine": runs[0]["chdb_engine_version"], "python_package": chdb.__version__},
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "shared": "2 cores shared with other agents' test runs (CI) while measuring",
        },
    }


NOTES = (
    "Runs share one data folder, so the 2nd and later runs re-attribute days already "
    "attributed (attribute drops and rewrites each day's partition) and replace readout rows "
    "that exist: write_readout's ALTER TABLE ... DELETE (mutations_sync = 1) then has rows to "
    "delete and costs about a second per call (6 calls per data set of 3 days), against "
    "well under 0.2 s when there is nothing to delete (the first run); that fixed cost is "
    "why ratio_to_tenth is far below 10 and why the readout part grows after run 1. "
    "Attribution (one ASOF JOIN over the day's recommendations and one window of events, "
    "both read FINAL) is about 3 s per serve day of ~333k recommendations. The medians "
    "are per number (each key's median over the runs)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies --requests, --events and --users"
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--events", type=int, default=10_000_000, help="non-recommendation events")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=3, help="serve days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", default="/tmp/twotier-bench-readout")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(args)
    emit(result, RESULTS, save=not args.no_save)


if __name__ == "__main__":
    main()
