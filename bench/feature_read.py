"""Benchmark: online feature matrix for 1 user x 500 candidates vs. a bare pymongo read.

Starts its own MongoDB-wire server (``--server``, SecantusDB by default) through the
project's infra (own data folder and port). Per scenario (catalogue size), writes
MovieLens-ranker features for one user and the 500 candidates through
``OnlineFeatures.write``, fills the rest of the catalogue, then times, interleaved
request by request:

* ``matrix``: ``OnlineFeatures.matrix("movielens", "ranker", user, 500 candidates)``;
* ``bare_find``: ``list(collection.find({"_id": {"$in": ids}}))`` of the same 500 items;
* ``reader_cold``: serving's ``FeatureReader.matrix`` with an empty entity cache
  (``clear()`` before each request, untimed): the user and all 500 items in one call;
* ``reader_warm``: the same with the 500 item documents cached: only the user is read.

Prints JSON (p50/p99 per run and their medians over runs, ratios, targets, machine, and
notes on what limits it) and writes it to ``bench/results/feature_read.json``.

Usage::

    .venv/bin/python bench/feature_read.py [--scenario 20000:30 --scenario 1000:200] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymongo import MongoClient
from result_file import emit

from twotier.config import MongoDBOnlineStoreConfig, Settings, load_settings
from twotier.events import Event
from twotier.features import OnlineFeatures, aggregate
from twotier.infra.stack import make_service
from twotier.naming import online_collection
from twotier.serve_apps.feature_reader import MAX_STALENESS_S, FeatureReader

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "feature_read.json"
PROJECT, MODEL, USER = "movielens", "ranker", "bench-user"
TARGET_COLD_P99_MS, TARGET_WARM_P99_MS, TARGET_RATIO = 10.0, 2.0, 1.5
VARIANTS = ("matrix", "bare_find", "reader_cold", "reader_warm")
RATIOS = ("ratio_p50", "ratio_p99", "cold_ratio_p50", "cold_ratio_p99", "warm_ratio_p99")
"""Against bare_find: ``ratio_*`` of matrix, ``cold_ratio_*`` and ``warm_ratio_*`` of the reader."""


def _events(
    items: Sequence[int], seed: int, user_prefix: str, first: int, *, with_user: bool
) -> list[Event]:
    """A few views, smiles and dislikes per item with skewed popularity; the user sees some."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    events: list[Event] = []
    n = first
    for item in items:
        views = 1 + int(rng.paretovariate(1.2))
        for v in range(min(views, 50)):
            n += 1
            if with_user and v == 0 and item % 7 == 0:
                user = USER
            else:
                user = f"{user_prefix}{rng.randrange(5000)}"
            rating = rng.choice([1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0])
            base = {"project": PROJECT, "user_id": user, "item_id": str(item), "value": rating}
            ts = t0 + n * 1000
            events.append(Event(event_id=f"b{n}", action="view", ts=ts, **base))
            if rating >= 4:
                events.append(Event(event_id=f"b{n}s", action="smile", ts=ts, **base))
            elif rating <= 2:
                events.append(Event(event_id=f"b{n}d", action="dislike", ts=ts, **base))
    return events


def _insert_filler(settings: Settings, features: OnlineFeatures, events: list[Event]) -> int:
    """Bulk-insert the documents ``write`` would create for ``events`` (same shape).

    Only for the rest of the catalogue: on FerretDB v1 every compare-and-set update
    scans the whole collection (only a lone ``{_id: <string>}`` filter is pushed down
    to SQLite), so writing 20,000 new documents through ``write`` is quadratic.
    """
    client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
    db = client[settings.online_store.database]
    inserted = 0
    for group in features.spec(PROJECT, MODEL).groups:
        updates = aggregate(group, events)
        docs = []
        for eid in updates.entity_ids():
            doc: dict[str, Any] = {"_id": eid, "_batch": {"bench-filler": 0}}
            doc.update(updates.increments.get(eid, {}))
            doc.update(updates.maxima.get(eid, {}))
            docs.append(doc)
        for start in range(0, len(docs), 1000):
            db[online_collection(PROJECT, group.key)].insert_many(docs[start : start + 1000])
        inserted += len(docs)
    client.close()
    return inserted


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def _nothing() -> None:
    pass


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    base: Settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data_dir,
        **{args.server: {"port": args.port}},
        stack={"online_server": args.server},
    )
    service = make_service(args.server, base)
    service.start(print)
    try:
        scenarios = []
        for spec in args.scenario:
            catalogue, requests = (int(v) for v in spec.split(":"))
            database = f"bench_{catalogue}"
            settings = base.model_copy(
                update={"online_store": MongoDBOnlineStoreConfig(database=database)}
            )
            scenarios.append(_measure(settings, args, catalogue, requests))
    finally:
        service.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    headline = scenarios[0]
    main = headline["median_over_runs"]
    ratios = {key: headline[key] for key in RATIOS}
    return {
        "benchmark": "online feature matrix (movielens ranker), 1 user x 500 candidates",
        "headline": {
            "scenario": headline["setup"]["catalogue_items"],
            **{name: main[name] for name in VARIANTS},
            **ratios,
        },
        "targets": {
            "p99_ms": f"matrix p99 <= {TARGET_COLD_P99_MS} ms",
            "p99_met": main["matrix"]["p99_ms"] <= TARGET_COLD_P99_MS,
            "ratio": f"matrix/bare_find p50 and p99 <= {TARGET_RATIO}",
            "ratio_met": ratios["ratio_p50"] <= TARGET_RATIO
            and ratios["ratio_p99"] <= TARGET_RATIO,
            "cold_p99_ms": f"reader_cold p99 <= {TARGET_COLD_P99_MS} ms",
            "cold_p99_met": main["reader_cold"]["p99_ms"] <= TARGET_COLD_P99_MS,
            "cold_ratio": f"reader_cold/bare_find p99 <= {TARGET_RATIO}",
            "cold_ratio_met": ratios["cold_ratio_p99"] <= TARGET_RATIO,
            "warm_p99_ms": f"reader_warm p99 <= {TARGET_WARM_P99_MS} ms",
            "warm_p99_met": main["reader_warm"]["p99_ms"] <= TARGET_WARM_P99_MS,
        },
        "scenarios": scenarios,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "shared": "2 cores shared with 4 other agents' test stacks while measuring",
        },
        "online_store": f"{args.server} {getattr(base, args.server).version} on loopback",
        "notes": NOTES,
    }


def _shuffle(settings: Settings, seed: int) -> None:
    """Rewrite each collection in random order, as a catalogue written over time would be.

    FerretDB scans in insertion order and stops a ``find`` with a ``limit`` once it has
    enough documents, so candidates written first would be found unrealistically early.
    """
    client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
    db = client[settings.online_store.database]
    for name in db.list_collection_names():
        docs = list(db[name].find({}))
        random.Random(seed).shuffle(docs)
        db.drop_collection(name)
        for start in range(0, len(docs), 1000):
            db[name].insert_many(docs[start : start + 1000])
    client.close()


def _measure(
    settings: Settings, args: argparse.Namespace, catalogue: int, requests: int
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    chosen = rng.sample(range(catalogue), args.candidates)
    candidates = [str(i) for i in chosen]
    rest = sorted(set(range(catalogue)) - set(chosen))
    events = _events(chosen, args.seed, "u", 0, with_user=True)
    filler = _events(rest, args.seed + 1, "f", len(events) * 2, with_user=False)
    with OnlineFeatures(settings) as features:
        features.ensure_indexes(PROJECT)
        started = time.perf_counter()
        for batch_id, start in enumerate(range(0, len(events), 1000)):
            features.write(PROJECT, events[start : start + 1000], "bench", batch_id)
        write_s = time.perf_counter() - started
        filler_docs = _insert_filler(settings, features, filler)
        _shuffle(settings, args.seed)
        print(f"wrote {len(events)} events in {write_s:.1f} s, {filler_docs} filler documents")
        x = features.matrix(PROJECT, MODEL, USER, candidates)
        spec = features.spec(PROJECT, MODEL)
        assert x.shape == (args.candidates, len(spec.columns()))
        assert float(x[:, 0].max()) > 0, "the benchmark user has no features"

        client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
        items = client[settings.online_store.database][online_collection(PROJECT, "item_stats_v1")]
        # A TTL of the longest allowed staleness keeps the warm reader's items cached for
        # a whole run; warm_misses counts the requests that still read items.
        cold = FeatureReader(features, ttl_s=MAX_STALENESS_S)
        warm = FeatureReader(features, ttl_s=MAX_STALENESS_S)
        warm_misses = 0

        def read_warm() -> None:
            nonlocal warm_misses
            warm_misses += warm.matrix(spec, PROJECT, USER, candidates).cache_misses > 0

        variants: dict[str, Callable[[], Any]] = {
            "matrix": lambda: features.matrix(PROJECT, MODEL, USER, candidates),
            "bare_find": lambda: list(items.find({"_id": {"$in": candidates}})),
            "reader_cold": lambda: cold.matrix(spec, PROJECT, USER, candidates),
            "reader_warm": read_warm,
        }
        untimed_setup: dict[str, Callable[[], Any]] = {"reader_cold": cold.clear}
        assert len(variants["bare_find"]()) == len(candidates)
        np.testing.assert_array_equal(
            cold.matrix(spec, PROJECT, USER, candidates, now_ms=0).matrix,
            features.matrix(PROJECT, MODEL, USER, candidates, now_ms=0),
        )
        warmup = max(requests // 10, 3)
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        warm_misses = 0
        runs: list[dict[str, dict[str, float]]] = []
        for r in range(args.runs):
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(requests):
                for name, fn in variants.items():
                    untimed_setup.get(name, _nothing)()
                    samples[name].append(_time(fn))
            runs.append({name: _percentiles(s) for name, s in samples.items()})
            print(f"{catalogue} items, run {r + 1}/{args.runs}: {json.dumps(runs[-1])}", flush=True)
        client.close()

    def median(name: str, key: str) -> float:
        return round(statistics.median(run[name][key] for run in runs), 3)

    summary = {
        name: {key: median(name, key) for key in ("p50_ms", "p99_ms", "mean_ms")}
        for name in variants
    }
    return {
        "setup": {
            "catalogue_items": catalogue,
            "candidates": args.candidates,
            "events_written_through_write": len(events),
            "write_seconds": round(write_s, 1),
            "catalogue_filler": (
                f"{filler_docs} documents of {len(filler)} more events, aggregated by the same "
                "`aggregate` and bulk-inserted (see _insert_filler), then every collection "
                "rewritten in random order (see _shuffle)"
            ),
            "columns": len(spec.columns()),
            "feature_groups_read": [g.name for g in spec.groups],
            "requests_per_run": requests,
            "warmup_requests": warmup,
            "runs": args.runs,
            "order": f"interleaved per request: {', '.join(VARIANTS)}",
            "entity_cache": (
                f"ttl {MAX_STALENESS_S} s; reader_cold cleared before each request (untimed); "
                f"{warm_misses} of {requests * args.runs} reader_warm requests read items"
            ),
        },
        "median_over_runs": summary,
        **_ratios(summary),
        "runs": runs,
    }


def _ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """``RATIOS``: the matrix and the reader against the bare ``$in`` of the same items."""
    bare = summary["bare_find"]

    def ratio(name: str, key: str) -> float:
        return round(summary[name][key] / bare[key], 3)

    return {
        "ratio_p50": ratio("matrix", "p50_ms"),
        "ratio_p99": ratio("matrix", "p99_ms"),
        "cold_ratio_p50": ratio("reader_cold", "p50_ms"),
        "cold_ratio_p99": ratio("reader_cold", "p99_ms"),
        "warm_ratio_p99": ratio("reader_warm", "p99_ms"),
    }


NOTES = (
    "reader_cold is what a tier-two replica pays for candidates it has not seen within "
    "feature_cache_ttl_s (the user's and all item documents in one get_groups call); "
    "reader_warm what it pays for a popular slate (the user's document only). "
    "FerretDB v1 (SQLite) pushes down to SQL only a filter that is exactly {_id: <string>}; "
    "a find with {_id: {$in: [...]}} reads and decodes every document of the collection in "
    "Go and filters in memory, so one read of 500 candidates costs O(catalogue), not "
    "O(500). Both the matrix and the bare find pay this, which is why the ratio is near 1 "
    "and why p99 <= 10 ms is out of reach on FerretDB at a realistic catalogue size; on "
    "MongoDB the same $in is an _id index lookup. What OnlineFeatures does on top of the "
    "store (projection of the stored fields, whole answer in the first batch, the user "
    "group read concurrently, vectorised derivations) is what the small-catalogue scenario "
    "shows. The same FerretDB limit makes every compare-and-set update a collection scan, "
    "which is why the catalogue filler is bulk-inserted."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        action="append",
        help="CATALOGUE:REQUESTS per run; the first is the headline (default 20000:30, 1000:200)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--server",
        default="secantusdb",
        choices=["secantusdb", "ferretdb"],
        help="the local MongoDB-wire server to start",
    )
    parser.add_argument("--port", type=int, default=31290)
    parser.add_argument("--data-dir", default="/tmp/tt-g-bench")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    args.scenario = args.scenario or ["20000:30", "1000:200"]
    result = run(args)
    emit(result, RESULTS, save=not args.no_save)


if __name__ == "__main__":
    main()
