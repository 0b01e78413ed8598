"""Benchmark: ``POST /recommend`` (500 tier-one candidates ranked by tier two) vs. the raw cost.

Starts its own MLflow, online store (``--server``, SecantusDB by default) and Ray
through the project's infra (own data folder and ports), registers a tier-one model over
a synthetic catalogue (``--catalogue`` items, top-k 500) and a tier-two ranker (the
default ``TierTwoParams``: 60 trees of depth 4) for the MovieLens feature spec, writes
online features for the catalogue and one user through ``OnlineFeatures.write``, and
deploys the serving app (one replica per deployment, the per-entity item cache at its
default TTL). Then, per run:

* **raw**: the same two ONNX sessions and the same online reads in a plain Python loop in
  this process (``TierOneSession.run`` → ``FeatureReader.matrix`` with the same item
  cache → ``TierTwoSession.probabilities`` → top 10), one request at a time; and the
  same with every item read from the store (``raw_uncached_reads``);
* **served** at concurrency 1 and 8: ``/v1/<project>/recommend`` over HTTP;
* **floors** at concurrency 1: ``GET /healthz`` (HTTP proxy + ingress only) and
  ``/first-tier-model`` with k=10 (adds the tier-one host hop), so the served time can be
  split into proxy/ingress, the tier-one hop and the tier-two hop;
* **hot swap**: ``POST /v1/admin/models`` moving the ranker's champion between two
  versions: the time until it answers (every replica acknowledged) and until a
  ``/recommend`` names the new version.

Prints JSON (per run and the median over runs) and writes ``bench/results/serving.json``.

Usage::

    .venv/bin/python bench/serving.py [--catalogue 20000] [--runs 3] [--requests 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import numpy as np
import pandas as pd
from result_file import emit

from twotier.config import Settings, load_settings
from twotier.events import Event
from twotier.features import OnlineFeatures
from twotier.infra.stack import make_service
from twotier.models.tier_one import TierOneParams, TierOneSession, export_tier_one, train_tier_one
from twotier.models.tier_two import TierTwoParams, TierTwoSession, train_tier_two_frame
from twotier.serve_apps.deploy import deploy, move_serving_alias, serve_url
from twotier.serve_apps.feature_reader import FeatureReader
from twotier.serve_apps.testing import register_tier_one, register_tier_two

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "serving.json"
PROJECT, USER, CANDIDATES, TOP_N = "movielens", "42", 500, 10
TARGET_RATIO, TARGET_P99_MS = 2.0, 50.0


def _settings(args: argparse.Namespace) -> Settings:
    base = args.port_base
    settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=args.data_dir,
        kafka={"port": base, "controller_port": base + 1},
        ferretdb={"port": base + 2},
        secantusdb={"port": base + 6},
        stack={"online_server": args.server},
        mlflow={"port": base + 3},
        dagster={"port": base + 4},
        ray={"serve_port": base + 5, "gcs_port": base + 100},
    )
    serving = settings.serving.model_copy(update={"default_k": CANDIDATES, "deploy_on_up": False})
    return settings.model_copy(update={"serving": serving})


def _catalogue_events(n_items: int, seed: int) -> list[Event]:
    """Skewed views, smiles and dislikes over the catalogue; USER saw a tenth of it."""
    rng = random.Random(seed)
    events: list[Event] = []
    t0 = 1_700_000_000_000
    for item in range(1, n_items + 1):
        for v in range(1 + min(int(rng.paretovariate(1.2)), 20)):
            n = len(events)
            user = USER if v == 0 and item % 10 == 0 else f"u{rng.randrange(300)}"
            rating = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0])
            for suffix, action in [("", "view")] + ([("s", "smile")] if rating >= 4 else []):
                events.append(
                    Event(
                        event_id=f"b{n}{suffix}",
                        project=PROJECT,
                        user_id=user,
                        item_id=str(item),
                        action=action,
                        value=rating,
                        ts=t0 + n * 1000,
                    )
                )
    return events


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def _concurrent(call: Callable[[httpx.Client], None], total: int, workers: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                started = time.perf_counter()
                call(client)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {**_percentiles(latencies), "throughput_rps": round(total / wall, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings(args)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    services = [make_service(n, settings) for n in ("mlflow", "online_store", "ray")]
    for service in services:
        service.start(print)
    try:
        return _bench(settings, args)
    finally:
        for service in reversed(services):
            service.stop()


def _bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    uri = settings.mlflow.uri
    spec = settings.project_features(PROJECT).model_spec("ranker")
    rng = np.random.default_rng(args.seed)

    # Tier one over the catalogue; every item seen at least once so all can be candidates.
    views = pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, size=20 * args.catalogue).astype(str),
            "item_id": np.minimum(rng.zipf(1.2, size=20 * args.catalogue), args.catalogue),
        }
    )
    views = pd.concat(
        [views, pd.DataFrame({"user_id": USER, "item_id": range(1, args.catalogue + 1)})]
    )
    views["item_id"] = views["item_id"].astype(str)
    tier_one = train_tier_one(views, TierOneParams(top_k=CANDIDATES, factors=32))
    register_tier_one(uri, PROJECT, tier_one)

    # Tier two: the default ranker, on synthetic rows of the MovieLens spec.
    columns = spec.columns()
    x = rng.gamma(2.0, 3.0, size=(3000, len(columns))).astype(np.float32)
    label = ((x[:, 0] - x[:, 8] + rng.normal(size=3000)) > 0).astype(int)
    frame = pd.DataFrame(x, columns=columns).assign(ts=np.arange(3000) + 1, label=label)
    rankers = [
        train_tier_two_frame(frame, spec, 2000, TierTwoParams(random_state=seed)) for seed in (1, 2)
    ]
    versions = [
        register_tier_two(uri, PROJECT, rankers[0]).version,
        register_tier_two(uri, PROJECT, rankers[1], alias=None).version,
    ]

    events = _catalogue_events(args.catalogue, args.seed)
    started = time.perf_counter()
    with OnlineFeatures(settings) as features:
        features.ensure_indexes(PROJECT)
        features.write(PROJECT, events, batch_key="bench", batch_id=0)
    write_s = time.perf_counter() - started
    print(f"wrote {len(events)} events in {write_s:.0f} s")

    deploy(settings, print, log_recommendations=False)
    url = f"{serve_url(settings)}/v1/{PROJECT}/recommend"
    body = {"user_id": USER, "n": TOP_N, "k": CANDIDATES, "group": "control"}

    one = TierOneSession(export_tier_one(tier_one))
    rankers_onnx = {v: TierTwoSession(r.onnx_model) for v, r in zip(versions, rankers, strict=True)}
    features = OnlineFeatures(settings)
    # The same per-entity item cache the serving replica keeps, with the same TTL.
    reader = FeatureReader(features, settings.serving.feature_cache_ttl_s)

    def raw(version: str, cached: bool = True) -> list[str]:
        indices, _ = one.run(one.user_indices([USER]), CANDIDATES)
        candidates = [one.item_ids[j] for j in indices[0]]
        if cached:
            matrix = reader.matrix(spec, PROJECT, USER, candidates).matrix
        else:
            matrix = features.matrix_for_spec(spec, PROJECT, USER, candidates)
        scores = rankers_onnx[version].probabilities(matrix)
        return [candidates[i] for i in np.argsort(-scores, kind="stable")[:TOP_N]]

    def served(client: httpx.Client) -> None:
        response = client.post(url, json=body)
        response.raise_for_status()

    # Where the served time goes: the proxy and ingress alone, then one model-host hop.
    healthz_url = f"{serve_url(settings)}/healthz"
    first_tier_url = f"{serve_url(settings)}/v1/{PROJECT}/first-tier-model"

    def healthz(client: httpx.Client) -> None:
        client.get(healthz_url).raise_for_status()

    def first_tier(client: httpx.Client) -> None:
        tier_one_body = {"user_id": USER, "k": TOP_N, "group": "control"}
        client.post(first_tier_url, json=tier_one_body).raise_for_status()

    # Warm up both paths and check that they agree.
    with httpx.Client(timeout=60) as client:
        for _ in range(5):
            answer = client.post(url, json=body).json()
    expected = raw(versions[0])
    assert [i["item_id"] for i in answer["items"]] == expected, (answer, expected)

    runs: list[dict[str, Any]] = []
    current = 0
    for r in range(args.runs):
        raw_latencies, uncached_latencies = [], []
        for _ in range(args.requests):
            t = time.perf_counter()
            raw(versions[current])
            raw_latencies.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw(versions[current], cached=False)
            uncached_latencies.append(time.perf_counter() - t)
        result = {
            "raw": _percentiles(raw_latencies),
            "raw_uncached_reads": _percentiles(uncached_latencies),
            "served_c1": _concurrent(served, args.requests, 1),
            "floor_healthz_c1": _concurrent(healthz, args.requests, 1),
            "floor_tier_one_only_c1": _concurrent(first_tier, args.requests, 1),
            "served_c8": _concurrent(served, 2 * args.requests, 8),
        }
        swap_answer, swap_seen = [], []
        for _ in range(args.swaps):
            current = 1 - current
            t = time.perf_counter()
            moved = move_serving_alias(
                settings, PROJECT, "tier2", "ranker", "champion", versions[current]
            )
            swap_answer.append(time.perf_counter() - t)
            with httpx.Client(timeout=60) as client:
                while True:
                    got = client.post(url, json=body).json()
                    if any(m["version"] == versions[current] for m in got["models"]):
                        break
            swap_seen.append(time.perf_counter() - t)
            assert moved["version"] == versions[current]
        result["hot_swap"] = {
            "admin_answer_s_median": round(statistics.median(swap_answer), 3),
            "first_request_on_new_version_s_median": round(statistics.median(swap_seen), 3),
            "swaps": args.swaps,
        }
        result["ratio_p50_served_c1_to_raw"] = round(
            result["served_c1"]["p50_ms"] / result["raw"]["p50_ms"], 3
        )
        print(json.dumps({"run": r, **result}))
        runs.append(result)
    features.close()

    def median(path: tuple[str, ...]) -> float:
        values = []
        for run_ in runs:
            value: Any = run_
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    headline: dict[str, Any] = {
        "raw_p50_ms": median(("raw", "p50_ms")),
        "raw_uncached_reads_p50_ms": median(("raw_uncached_reads", "p50_ms")),
        "served_c1": {k: median(("served_c1", k)) for k in ("p50_ms", "p99_ms", "throughput_rps")},
        "served_c8": {k: median(("served_c8", k)) for k in ("p50_ms", "p99_ms", "throughput_rps")},
        "ratio_p50_served_c1_to_raw": median(("ratio_p50_served_c1_to_raw",)),
        "floor_healthz_c1_p50_ms": median(("floor_healthz_c1", "p50_ms")),
        "floor_tier_one_only_c1_p50_ms": median(("floor_tier_one_only_c1", "p50_ms")),
        "hot_swap_admin_answer_s": median(("hot_swap", "admin_answer_s_median")),
        "hot_swap_first_request_on_new_version_s": median(
            ("hot_swap", "first_request_on_new_version_s_median")
        ),
    }
    return {
        "benchmark": "serving /recommend: 1 user, 500 tier-one candidates ranked by tier two",
        "headline_median_over_runs": headline,
        "targets": {
            "ratio": f"served p50 <= {TARGET_RATIO} x raw p50",
            "ratio_met": headline["ratio_p50_served_c1_to_raw"] <= TARGET_RATIO,
            "p99_c8": f"p99 at concurrency 8 <= {TARGET_P99_MS} ms",
            "p99_c8_met": headline["served_c8"]["p99_ms"] <= TARGET_P99_MS,
            "hot_swap": "every replica serves the new version within 10 s",
            "hot_swap_met": headline["hot_swap_admin_answer_s"] <= 10.0,
        },
        "setup": {
            "catalogue_items": args.catalogue,
            "online_server": settings.local_online_server,
            "candidates": CANDIDATES,
            "top_n": TOP_N,
            "tier_one": "implicit ALS, 32 factors, ONNX TopK",
            "tier_two": "XGBoost 60 trees depth 4 (TierTwoParams defaults), ONNX",
            "feature_groups_read": [g.name for g in spec.groups],
            "online_events_written": len(events),
            "feature_cache": (
                f"on: item documents cached per entity for {settings.serving.feature_cache_ttl_s}"
                " s in the replica and in the raw loop alike (FeatureReader); "
                "raw_uncached_reads reads every item from the store"
            ),
            "replicas": "1 per deployment (Ingress, ModelDirectory, TierOneHost, TierTwoHost)",
            "recommendation_log": "off (Kafka not started)",
            "requests_per_run": {
                "raw": args.requests,
                "c1": args.requests,
                "c8": 2 * args.requests,
            },
            "runs": args.runs,
        },
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2 cores shared with other jobs; Ray, MLflow and the online store on them",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--catalogue", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--server",
        default="secantusdb",
        choices=["secantusdb", "ferretdb"],
        help="the local MongoDB-wire server of the online store",
    )
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port-base", type=int, default=30600)
    parser.add_argument("--data-dir", default="/tmp/tt-h3-bench")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    if args.catalogue < CANDIDATES:
        parser.error(f"--catalogue must be at least {CANDIDATES} (the candidate count)")
    result = run(args)
    emit(result, RESULTS, save=not args.no_save)


if __name__ == "__main__":
    main()
