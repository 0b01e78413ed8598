"""Benchmark: model quality on the full MovieLens data over rolling temporal cut-offs.

Loads MovieLens small (100,836 ratings) into a fresh embedded chdb, materialises the
feature snapshots and both training sets once through the Dagster asset graph, then for
each cut-off (``--quantiles``, event-time quantiles of the views, 0.60 to 0.90 by
default):

1. chooses the recent-popularity window on a validation split *inside* the training
   period (the last ``--validation-fraction`` of the training views): the window of
   ``--windows`` whose recent popularity has the best NDCG@10 there;
2. trains tier one (ALS, cold fallback = recent popularity of that window) on the views
   before the cut-off, and tier two (XGBoost) on tier one's candidates at label cuts
   inside the training period (``twotier.models.candidates``), with the platform's own
   functions;
3. evaluates on every hold-out user (``evaluate_two_tiers``): NDCG@10 and Recall@100 of
   the two tiers, tier one, all-time and recent popularity, split into known and cold
   users, with 95% paired bootstrap intervals.

The headline pools the per-user NDCG of every cut-off (user x cut-off pairs resampled
together) and sets it against the targets of issue 11. Prints JSON and writes
``bench/results/quality.json``; the hold-out is never used to choose anything.

Usage::

    .venv/bin/python bench/quality.py [--quantiles 0.6 0.675 0.75 0.825 0.9] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from result_file import emit

from twotier.config import ClickHouseOfflineStoreConfig, load_settings
from twotier.items import items_frame, movielens_items
from twotier.models.candidates import candidate_training_set, label_cuts
from twotier.models.data import items_by_user, read_interactions
from twotier.models.datasets import holdout_cutoff, read_tier_one_set
from twotier.models.evaluate import evaluate_two_tiers
from twotier.models.metrics import PopularityBaseline, bootstrap_ratio, per_user_metrics
from twotier.models.tier_one import TierOneParams, export_tier_one, train_tier_one
from twotier.models.tier_two import TierTwoParams, train_tier_two_frame
from twotier.offline_store import events_frame, open_offline_store
from twotier.offline_store.base import OfflineStore
from twotier.pipelines.materialize import materialize_project
from twotier.replay import movielens_events

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "quality.json"
DATASET = REPO.parent / "shared" / "datasets" / "movielens-small"
PROJECT = "movielens"
DATA_ASSETS = ["feature_snapshots", "training_set_tier1"]
LABEL_CUTS = [0.7, 0.8, 0.9]
FIRST, LAST = "1996-03-01", "2018-09-01"
NDCG_K, K = 10, 100
# Ranker settings tried per cut-off (--tune), chosen by validation AUC, never the hold-out.
TIER_TWO_GRID = [
    TierTwoParams(),
    TierTwoParams(n_estimators=150, max_depth=4, learning_rate=0.05),
    TierTwoParams(n_estimators=200, max_depth=6, learning_rate=0.05),
    TierTwoParams(n_estimators=120, max_depth=3, learning_rate=0.1),
]
TARGETS = {
    "known_vs_popularity": 1.5,
    "known_vs_popularity_stretch": 2.0,
    "known_vs_recent_popularity": 1.10,
    "all_vs_popularity": 1.2,
    "all_vs_popularity_stretch": 1.3,
}


def choose_window(
    store: OfflineStore, cutoff: int, windows: list[float], fraction: float
) -> dict[str, Any]:
    """The recent-popularity window with the best NDCG@10 on a split inside training."""
    views = read_interactions(store, PROJECT, "view", until_ts=cutoff)
    smiles = read_interactions(store, PROJECT, "smile", until_ts=cutoff)
    inner = holdout_cutoff(views["ts"], fraction)
    train = views[views["ts"] < inner]
    seen = items_by_user(train)
    later = items_by_user(smiles[smiles["ts"] >= inner])
    relevant = {u: items - seen.get(u, set()) for u, items in later.items()}
    users = sorted(u for u, items in relevant.items() if items)
    scores = {}
    for days in windows:
        try:
            ranked = PopularityBaseline.fit_recent(train, inner, days).rank(users, K, seen)
        except ValueError:
            continue
        ndcg, _ = per_user_metrics(ranked, relevant, users, K, NDCG_K)
        scores[days] = float(ndcg.mean())
    best = max(scores, key=lambda d: scores[d])
    return {"days": best, "validation_users": len(users), "ndcg_by_window": scores}


def validation_ndcg(model: Any, rows: pd.DataFrame, columns: list[str]) -> float:
    """Mean NDCG@10 over users of the ranker's order of their candidate rows (label = hit)."""
    scores = model.native.predict_proba(rows[columns].to_numpy(np.float32))[:, 1]
    frame = pd.DataFrame({"user": rows["user_id"].to_numpy(), "s": scores, "y": rows["label"]})
    discounts = 1.0 / np.log2(np.arange(2, NDCG_K + 2))
    values = []
    for _, group in frame.groupby("user", sort=False):
        labels = group["y"].to_numpy()
        hits = int(labels.sum())
        if hits == 0:
            continue
        top = labels[np.argsort(-group["s"].to_numpy(), kind="stable")][:NDCG_K]
        ideal = discounts[: min(hits, NDCG_K)].sum()
        values.append(float((top * discounts[: len(top)]).sum() / ideal))
    return float(np.mean(values)) if values else 0.0


def one_cutoff(
    store: OfflineStore,
    settings: Any,
    views: pd.DataFrame,
    quantile: float,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Train and evaluate at one cut-off on tier one's stored views."""
    started = time.perf_counter()
    cutoff = holdout_cutoff(views["ts"], 1.0 - quantile)
    window = choose_window(store, cutoff, args.windows, args.validation_fraction)
    before = views[views["ts"] < cutoff]
    tier_one_params = TierOneParams(fallback_window_days=window["days"])
    graph = export_tier_one(train_tier_one(before, tier_one_params))
    spec = settings.project_features(PROJECT).model_spec("ranker")
    cuts = label_cuts(before["ts"], LABEL_CUTS)
    rows = candidate_training_set(
        store, settings, PROJECT, spec, before, cuts, cutoff, tier_one_params
    )
    # Each candidate setting is trained on the rows before the last label cut and scored
    # by NDCG@10 over that cut's candidates per user (inside the training period, known
    # users only); the best one is evaluated on the hold-out.
    tried = []
    trained, best = None, -1.0
    for params in TIER_TWO_GRID if args.tune else [TierTwoParams()]:
        model = train_tier_two_frame(rows, spec, cuts[-1], params)
        score = validation_ndcg(model, rows[rows["ts"] >= cuts[-1]], spec.columns())
        tried.append(
            {
                **params.model_dump(),
                "validation_auc": round(model.metrics["auc"], 4),
                "validation_ndcg_at_10": round(score, 4),
            }
        )
        if score > best:
            trained, chosen, best = model, params, score
    assert trained is not None
    train_s = time.perf_counter() - started
    per_user: dict[str, dict[str, np.ndarray]] = {}
    metrics = evaluate_two_tiers(
        store,
        settings,
        PROJECT,
        graph,
        trained.onnx_model,
        cutoff,
        k=K,
        ndcg_k=NDCG_K,
        recent_days=window["days"],
        per_user=per_user,
    )
    return (
        {
            "quantile": quantile,
            "cutoff_ts": cutoff,
            "recent_window": window,
            "tier_two_auc": round(trained.metrics["auc"], 4),
            "tier_two_params": chosen.model_dump(),
            "tier_two_tried": tried,
            "tier_two_rows": len(rows),
            "seconds_train": round(train_s, 2),
            "seconds_total": round(time.perf_counter() - started, 2),
            "metrics": {k: round(v, 4) for k, v in sorted(metrics.items())},
        },
        per_user,
    )


def pooled(per_cutoff: list[dict[str, dict[str, np.ndarray]]], split: str) -> dict[str, Any]:
    """NDCG@10 means and ratios over every (user, cut-off) pair of ``split``."""
    arrays = {
        name: np.concatenate([p[split][name] for p in per_cutoff if split in p])
        for name in ("two_tier", "tier_one", "popularity", "recent_popularity")
    }
    out: dict[str, Any] = {
        "pairs": len(arrays["two_tier"]),
        "ndcg_at_10": {n: round(float(a.mean()), 4) for n, a in arrays.items()},
    }
    for baseline in ("popularity", "recent_popularity"):
        ratio, low, high = bootstrap_ratio(arrays["two_tier"], arrays[baseline], 2000)
        out[f"two_tier_ratio_vs_{baseline}"] = [round(ratio, 3), round(low, 3), round(high, 3)]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data_dir,
        cache_dir=REPO / ".twotier" / "cache",
    )
    settings = settings.model_copy(
        update={"offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{data_dir / 'offline'}")}
    )
    try:
        with open_offline_store(settings) as store:
            store.ensure_tables(PROJECT)
            frame = events_frame(movielens_events(PROJECT, Path(args.dataset), limit=args.limit))
            store.insert_events(PROJECT, frame)
            # What the items_offline asset copies from the online store: the movies.
            movies = movielens_items(Path(args.dataset))
            store.insert_items(PROJECT, items_frame(movies))
        print(f"loaded {len(frame)} events and {len(movies)} movies", flush=True)
        started = time.perf_counter()
        materialize_project(settings, PROJECT, selection=DATA_ASSETS, partition_range=(FIRST, LAST))
        print(f"features and training sets in {time.perf_counter() - started:.1f} s", flush=True)
        cutoffs, per_user = [], []
        with open_offline_store(settings) as store:
            views = read_tier_one_set(store, PROJECT)
            for q in args.quantiles:
                result, users = one_cutoff(store, settings, views, q, args)
                cutoffs.append(result)
                per_user.append(users)
                m = result["metrics"]
                print(
                    f"q={q}: known {m.get('eval_known_users')} cold {m.get('eval_cold_users')} "
                    f"two tiers {m.get('two_tier_known_ndcg_at_10')} vs popularity "
                    f"{m.get('popularity_known_ndcg_at_10')} / recent "
                    f"{m.get('recent_popularity_known_ndcg_at_10')} (known users)",
                    flush=True,
                )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    known, everyone, cold = (pooled(per_user, s) for s in ("known", "all", "cold"))
    met = {
        "known_vs_popularity": known["two_tier_ratio_vs_popularity"][0]
        >= TARGETS["known_vs_popularity"],
        "known_vs_recent_popularity": known["two_tier_ratio_vs_recent_popularity"][0]
        >= TARGETS["known_vs_recent_popularity"],
        "all_vs_popularity": everyone["two_tier_ratio_vs_popularity"][0]
        >= TARGETS["all_vs_popularity"],
    }
    return {
        "benchmark": "model quality over rolling temporal cut-offs (full MovieLens small)",
        "protocol": {
            "quantiles": args.quantiles,
            "relevant": "hold-out smiles (rating >= 4) on items the user had not viewed",
            "recall_at": K,
            "candidates": "the ranker's declared mix: 200 of tier one, then 100 of recent "
            "popularity; cold users get tier one's fallback in its order (rerank_cold: false)",
            "recent_window": "chosen per cut-off on the last "
            f"{args.validation_fraction:g} of the training views, from {args.windows} days",
            "bootstrap": "paired, 2000 resamples of (user, cut-off) pairs; [ratio, low, high]",
            "models": "tier one ALS 16 factors x 8 iterations (TierOneParams defaults, cold "
            "fallback = recent popularity); tier two XGBoost on the MovieLens ranker spec "
            f"({len(settings.project_features(PROJECT).model_spec('ranker').columns())} "
            "columns: counters, decayed popularity, mean rating, genres, year, genre "
            "affinities, tier one's score/rank), trained on tier one's candidates (200 ALS "
            f"+ 100 recent popularity) at label cuts {LABEL_CUTS} of the training views, "
            "each from a tier one trained before its cut, the last cut held out; its "
            + (
                f"settings chosen per cut-off from {len(TIER_TWO_GRID)} by NDCG@10 on that "
                "held-out cut (inside the training period)"
                if args.tune
                else "settings are TierTwoParams defaults"
            )
            + "; served order = tier two's",
        },
        "headline": {
            "ratios": {
                "known_vs_popularity": known["two_tier_ratio_vs_popularity"][0],
                "known_vs_recent_popularity": known["two_tier_ratio_vs_recent_popularity"][0],
                "all_vs_popularity": everyone["two_tier_ratio_vs_popularity"][0],
                "all_tier_one_alone_vs_popularity": round(
                    everyone["ndcg_at_10"]["tier_one"] / everyone["ndcg_at_10"]["popularity"], 3
                ),
            },
            "known_users": known,
            "all_users": everyone,
            "cold_users": cold,
        },
        "targets": {
            **{f"{k}_ratio": v for k, v in TARGETS.items()},
            **{f"{k}_met": v for k, v in met.items()},
        },
        "cutoffs": cutoffs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quantiles", type=float, nargs="+", default=[0.6, 0.675, 0.75, 0.825, 0.9]
    )
    parser.add_argument(
        "--windows", type=float, nargs="+", default=[90.0, 180.0, 365.0, 730.0, 1460.0]
    )
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="train the ranker with TierTwoParams defaults only (no validation grid)",
    )
    parser.add_argument("--limit", type=int, default=None, help="Only the first N ratings.")
    parser.add_argument("--dataset", default=str(DATASET))
    parser.add_argument("--data-dir", default="/tmp/twotier-bench-quality")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(args)
    emit(result, RESULTS, save=not args.no_save)


if __name__ == "__main__":
    main()
