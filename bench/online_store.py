"""Benchmark: the MongoDB-wire servers of the local stack side by side, in one run.

For each server configuration (SecantusDB with and without ``--sync-on-commit``, and
FerretDB v1), started through the project's infra with its own data folder and port:

* loads 20,000 documents of 10 counters through ``apply_increments``;
* times ``find({"_id": {"$in": 500 random ids}})`` with bare pymongo (p50 / p99);
* times ``OnlineStore.get_groups`` of 1 user + 500 items from two collections;
* the floors under serving's feature reads: ``find_one`` of one document by ``_id`` (a
  warm read: the user only) and the same 500 ids as four concurrent ``$in`` finds of 125
  (does fanning one read out over connections beat the server's own ``$in``?);
* measures compare-and-set ``$inc`` throughput: ``apply_increments`` batches of 1,000
  existing documents (FerretDB: of 10, it scans the collection per statement), with
  write concern ``j: true`` and without;
* probes change streams and transactions for real;
* durability: writes a batch, SIGKILLs the server the moment it is acknowledged,
  restarts it and checks that every counter and batch marker is there (``--kills``
  trials per configuration).

Prints JSON (per configuration; medians over ``--runs``) and writes it to
``bench/results/online_store.json``.

Usage::

    .venv/bin/python bench/online_store.py [--runs 3] [--kills 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError
from result_file import emit

from twotier.config import Settings, load_settings
from twotier.infra.service import Service, pid_alive
from twotier.infra.stack import make_service
from twotier.online_store import Read, connect
from twotier.online_store.mongodb import BATCHES_FIELD, MongoDBOnlineStore

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "online_store.json"
DOCS, COUNTERS, IN_IDS = 20_000, 10, 500
CONFIGS: dict[str, dict[str, Any]] = {
    "secantusdb --sync-on-commit": {"server": "secantusdb", "sync_on_commit": True},
    "secantusdb (no sync)": {"server": "secantusdb", "sync_on_commit": False},
    "ferretdb v1 sqlite": {"server": "ferretdb"},
}


def _settings(args: argparse.Namespace, name: str, journal: bool = True) -> Settings:
    cfg = CONFIGS[name]
    server = cfg["server"]
    data = Path(args.data_dir) / name.split()[0]
    section: dict[str, Any] = {"port": args.port}
    if server == "secantusdb":
        section["sync_on_commit"] = cfg["sync_on_commit"]
    return load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data,
        stack={"online_server": server, "services": ["online_store"]},
        online_store={"database": "bench", "journal": journal},
        **{server: section},
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _counters(rng: random.Random) -> dict[str, int]:
    return {f"c{k}": rng.randint(1, 5) for k in range(COUNTERS)}


def _sigkill(service: Service) -> None:
    pid = service.pid()
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def _probe(store: MongoDBOnlineStore, collection: str) -> dict[str, bool]:
    """Whether change streams and transactions really work (not what is declared)."""
    out = {"change_streams": False, "transactions": False}
    db = store._db
    try:
        with db[collection].watch(max_await_time_ms=1000) as stream:
            db[collection].insert_one({"_id": "probe-watch"})
            out["change_streams"] = (stream.try_next() or stream.try_next()) is not None
    except PyMongoError:
        pass
    try:
        with store._client.start_session() as session, session.start_transaction():
            db[collection].insert_one({"_id": "probe-txn"}, session=session)
        out["transactions"] = db[collection].find_one({"_id": "probe-txn"}) is not None
    except PyMongoError:
        pass
    return out


def _quarters(ids: list[str]) -> list[list[str]]:
    return [ids[i::4] for i in range(4)]


def _updates_per_s(
    settings: Settings, ids: list[str], bulk: int, batches: int, writer: str
) -> float:
    """CAS ``$inc`` updates per second over ``batches`` batches of ``bulk`` existing docs."""
    rng = random.Random(3)
    with connect(settings) as store:
        times = []
        for b in range(batches):
            chosen = rng.sample(ids, bulk)
            started = time.perf_counter()
            result = store.apply_increments(
                "items", writer, 1_000 + b, {i: _counters(rng) for i in chosen}
            )
            times.append(time.perf_counter() - started)
            assert result.written == bulk, result
    return bulk / statistics.median(times)


def _durability(service: Service, settings: Settings, trials: int) -> dict[str, Any]:
    """Acknowledged batches that survived a SIGKILL right after their acknowledgement."""
    lost = 0
    for t in range(trials):
        ids = [f"k{t}-{i}" for i in range(1_000)]
        with connect(settings) as store:
            store.apply_increments("durable", "kill", t, {i: {"views": 1} for i in ids})
            _sigkill(service)
        service.start()
        with connect(settings) as store:
            assert isinstance(store, MongoDBOnlineStore)
            found = store._db["durable"].count_documents(
                {"_id": {"$in": ids}, f"{BATCHES_FIELD}.kill": t}
            )
        lost += found != len(ids)
    return {"trials": trials, "trials_with_lost_writes": lost}


def one_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    settings = _settings(args, name)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    service = make_service("online_store", settings)
    service.start(print)
    ferret = CONFIGS[name]["server"] == "ferretdb"
    try:
        rng = random.Random(7)
        ids = [str(i) for i in range(DOCS)]
        with connect(settings) as store:
            assert isinstance(store, MongoDBOnlineStore)
            started = time.perf_counter()
            for n, start in enumerate(range(0, DOCS, 5_000)):
                chunk = ids[start : start + 5_000]
                store.apply_increments("items", "load", n, {i: _counters(rng) for i in chunk})
            store.apply_increments("users", "load", 0, {"u1": _counters(rng)})
            load_s = time.perf_counter() - started
            probe = _probe(store, "probe")
            caps = store.capabilities
        client: MongoClient[dict[str, Any]] = MongoClient(settings.online_store_uri)
        coll = client["bench"]["items"]
        in_ms: list[float] = []
        groups_ms: list[float] = []
        one_ms: list[float] = []
        fan_ms: list[float] = []
        fan = ThreadPoolExecutor(4)
        requests = min(args.requests, 10) if ferret else args.requests  # ~3 s per $in there
        with connect(settings) as store:
            for _ in range(requests):
                wanted = rng.sample(ids, IN_IDS)
                started = time.perf_counter()
                docs = list(coll.find({"_id": {"$in": wanted}}, batch_size=IN_IDS))
                in_ms.append((time.perf_counter() - started) * 1000)
                assert len(docs) == IN_IDS
                started = time.perf_counter()
                answers = store.get_groups([Read("users", ["u1"]), Read("items", wanted)])
                groups_ms.append((time.perf_counter() - started) * 1000)
                assert len(answers[1]) == IN_IDS
                started = time.perf_counter()
                assert coll.find_one({"_id": wanted[0]}) is not None
                one_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                parts = fan.map(
                    lambda ids: list(coll.find({"_id": {"$in": ids}})), _quarters(wanted)
                )
                assert sum(len(p) for p in parts) == IN_IDS
                fan_ms.append((time.perf_counter() - started) * 1000)
        fan.shutdown()
        client.close()
        bulk, batches = (10, 2) if ferret else (1_000, 7)
        journaled = _updates_per_s(settings, ids, bulk, batches, "cas-j")
        unjournaled = _updates_per_s(
            _settings(args, name, journal=False), ids, bulk, batches, "cas-no-j"
        )
        durability = None if ferret else _durability(service, settings, args.kills)
    finally:
        service.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)
    return {
        "load_20k_docs_s": round(load_s, 2),
        "find_in_500_p50_ms": round(_percentile(in_ms, 50), 2),
        "find_in_500_p99_ms": round(_percentile(in_ms, 99), 2),
        "find_one_p50_ms": round(_percentile(one_ms, 50), 2),
        "find_one_p99_ms": round(_percentile(one_ms, 99), 2),
        "find_in_500_as_4_concurrent_p50_ms": round(_percentile(fan_ms, 50), 2),
        "find_in_500_as_4_concurrent_p99_ms": round(_percentile(fan_ms, 99), 2),
        "get_groups_user_plus_500_p50_ms": round(_percentile(groups_ms, 50), 2),
        "get_groups_user_plus_500_p99_ms": round(_percentile(groups_ms, 99), 2),
        "cas_updates_per_s_j_true": round(journaled, 1),
        "cas_updates_per_s_j_false": round(unjournaled, 1),
        "cas_bulk_size": bulk,
        "change_streams": probe["change_streams"],
        "transactions": probe["transactions"],
        "declared": {
            "bulk_upsert": caps.bulk_upsert,
            "indexed_in": caps.indexed_in,
            "union_reads": caps.union_reads,
        },
        "durability_kill_9": durability,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="timed reads per run")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 trials per run")
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="repeatable")
    parser.add_argument("--port", type=int, default=31390)
    parser.add_argument("--data-dir", default="/tmp/twotier-bench-online-store")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    names = args.only or list(CONFIGS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:  # interleaved: every configuration sees the same machine load
            print(f"run {run}: {name}", flush=True)
            runs[name].append(one_config(args, name))
    median: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        first = results[0]
        median[name] = {
            k: (statistics.median(r[k] for r in results) if isinstance(v, float) else v)
            for k, v in first.items()
            if k != "durability_kill_9"
        }
        kills = [r["durability_kill_9"] for r in results if r["durability_kill_9"]]
        median[name]["durability_kill_9"] = (
            {
                "trials": sum(k["trials"] for k in kills),
                "trials_with_lost_writes": sum(k["trials_with_lost_writes"] for k in kills),
            }
            if kills
            else None
        )
    result = {
        "benchmark": "MongoDB-wire servers side by side (pymongo, one run, interleaved)",
        "config": vars(args),
        "documents": DOCS,
        "counters_per_document": COUNTERS,
        "median": median,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "2 shared cores; read the ratios between servers, not absolute times",
        },
    }
    emit(result, RESULTS, save=not args.no_save)


if __name__ == "__main__":
    main()
