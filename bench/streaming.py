"""Benchmark: the online feature job under a steady event stream — throughput and freshness.

Per run, with a fresh data folder: starts Kafka and the online store (``--server``,
SecantusDB by default) through the project's infra (own ports), starts
``python -m twotier.feature_jobs online --project memes`` as a subprocess (trigger
``--trigger`` s), then produces the synthetic meme feed (``twotier.generate``) at
``--rate`` events/s for ``--duration`` s. Meanwhile:

* a marker thread produces, every ``--marker-every`` s, one ``view`` by a new user
  ``bench-marker-<n>`` and polls ``memes__user_stats_v1`` until that user's document
  appears: freshness = visible time - produce time (p50, p99);
* a status thread polls ``<data_dir>/jobs/memes/online.json`` (rewritten by the job after
  every micro-batch) and keeps every batch's read / aggregate / write breakdown and the
  processed Kafka offsets.

Sustained throughput is the events the job processed between the first and the last
batch of the steady window divided by the time between them; ``capacity`` is events per
second of busy batch time (input rows / batch duration), what the job could do with no
idle time between triggers. After the producer stops the job drains; the lag left and
the drain time are recorded.

Prints JSON (per run, medians over runs, targets and whether they are met, machine) and
writes it to ``bench/results/streaming.json``.

Usage::

    .venv/bin/python bench/streaming.py [--runs 3] [--rate 6000] [--duration 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from result_file import emit

from twotier.config import Settings, load_settings
from twotier.events import Event
from twotier.feature_jobs.status import read_status
from twotier.generate import MemeFeedConfig, generate_memes
from twotier.infra.stack import make_service
from twotier.kafka_clients import make_producer
from twotier.naming import events_topic, online_collection
from twotier.online_store import connect
from twotier.replay import ensure_topic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "streaming.json"
PROJECT = "memes"
TARGET_EVENTS_PER_S, TARGET_P99_S = 5_000.0, 5.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Markers(threading.Thread):
    """Produces a marker view every ``every`` s and records when it becomes visible."""

    def __init__(self, settings: Settings, every: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.settings, self.every, self.stop = settings, every, stop
        self.sent: dict[str, float] = {}
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        producer = make_producer(self.settings, "bench-markers", linger_ms=0)
        collection = online_collection(PROJECT, "user_stats_v1")
        store = connect(self.settings)
        next_send, n = time.monotonic(), 0
        try:
            while not self.stop.is_set() or (
                set(self.sent) - set(self.seen) and time.monotonic() < self._deadline()
            ):
                now = time.monotonic()
                if not self.stop.is_set() and now >= next_send:
                    user = f"bench-marker-{n}"
                    event = Event(
                        event_id=f"bench-marker-{n}",
                        project=PROJECT,
                        user_id=user,
                        item_id="m0",
                        action="view",
                        ts=_now_ms(),
                        context={"content_type": "image"},
                    )
                    producer.send(
                        events_topic(PROJECT), key=user.encode(), value=event.to_json().encode()
                    ).get(timeout=10)
                    self.sent[user] = time.monotonic()
                    n += 1
                    next_send = now + self.every
                pending = [u for u in self.sent if u not in self.seen]
                if pending:
                    found = store.get_many(collection, pending, ["views"])
                    at = time.monotonic()
                    for user in found:
                        self.seen[user] = at
                time.sleep(0.05)
        finally:
            producer.close()
            store.close()

    def _deadline(self) -> float:
        return (max(self.sent.values()) if self.sent else time.monotonic()) + 60

    def delays(self) -> list[float]:
        return [self.seen[u] - self.sent[u] for u in self.sent if u in self.seen]


class StatusPoller(threading.Thread):
    """Keeps every distinct batch status the online job writes."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.settings, self.stop = settings, stop
        self.batches: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            status = read_status(self.settings, PROJECT)
            if status and status.get("batch_id") is not None and status.get("state") == "running":
                self.batches.setdefault(int(status["batch_id"]), {**status, "_seen": time.time()})
            time.sleep(0.1)


def _processed(status: dict[str, Any]) -> int:
    return sum(int(v) for v in (status.get("processed_offsets") or {}).values())


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    data_dir = Path(args.data_dir) / f"run{run}"
    shutil.rmtree(data_dir, ignore_errors=True)
    base = args.port_base
    settings = load_settings(
        path=REPO / "tests" / "twotier-test.yaml",
        data_dir=data_dir,
        kafka={"port": base, "controller_port": base + 1},
        ferretdb={"port": base + 2},
        secantusdb={"port": base + 6},
        stack={"online_server": args.server},
    )
    services = [make_service("kafka", settings), make_service("online_store", settings)]
    for service in services:
        service.start(print)
    job: subprocess.Popen[bytes] | None = None
    log_path = Path(args.data_dir) / f"run{run}-online-job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ensure_topic(settings, PROJECT)
        feed = MemeFeedConfig(seed=run)
        # A few events first: the job's first batch (Spark warm-up) is not measured.
        generate_memes(
            settings,
            PROJECT,
            feed.model_copy(update={"seed": 1000 + run}),
            events_per_second=2000,
            limit=500,
        )
        env = {**os.environ, **settings.to_env()}
        with open(log_path, "wb") as log:
            job = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "twotier.feature_jobs",
                    "online",
                    "--project",
                    PROJECT,
                    "--trigger-seconds",
                    str(args.trigger),
                    "--max-offsets-per-trigger",
                    str(args.max_offsets),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while (read_status(settings, PROJECT) or {}).get("batch_id") is None:
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"online job did not start; see {log_path}")
            time.sleep(0.5)
        stop = threading.Event()
        poller, markers = StatusPoller(settings, stop), Markers(settings, args.marker_every, stop)
        poller.start()
        markers.start()
        began = time.time()
        warmup_processed = _processed(read_status(settings, PROJECT) or {})
        report = generate_memes(
            settings,
            PROJECT,
            feed,
            events_per_second=args.rate,
            duration_s=args.duration,
            load_item_data=False,
        )
        produced_end = time.time()
        drain_deadline = time.monotonic() + args.drain_timeout
        drained_at = None
        while time.monotonic() < drain_deadline:
            status = read_status(settings, PROJECT) or {}
            if (
                (status.get("lag") or 0) <= 5
                and status.get("lag") is not None
                and status.get("updated_at_ms", 0) / 1000 > produced_end
            ):
                drained_at = time.time()
                break
            time.sleep(0.25)
        stop.set()
        markers.join(timeout=90)
        poller.join(timeout=5)
        final = read_status(settings, PROJECT) or {}
        ended = time.time()
        waited = {u: time.monotonic() - t for u, t in markers.sent.items() if u not in markers.seen}
    finally:
        if job is not None and job.poll() is None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
        for service in reversed(services):
            service.stop()

    steady = [
        b for bid, b in sorted(poller.batches.items()) if began <= b["_seen"] <= produced_end + 1
    ]
    throughput = None
    if len(steady) >= 2:
        span = (steady[-1]["updated_at_ms"] - steady[0]["updated_at_ms"]) / 1000
        if span > 0:
            throughput = (_processed(steady[-1]) - _processed(steady[0])) / span
    busy = [b for b in steady if b.get("duration_s") and b.get("input_rows", 0) >= 100]
    capacity = (
        sum(b["input_rows"] for b in busy) / sum(b["duration_s"] for b in busy) if busy else None
    )
    delays = markers.delays()
    # Markers never seen waited at least until the end: counting them at that wait gives
    # lower bounds of the percentiles (the true ones are at least this large).
    censored = delays + list(waited.values())
    after_warmup = [b for bid, b in sorted(poller.batches.items()) if b["_seen"] >= began]
    processed_total = _processed(after_warmup[-1]) - warmup_processed if after_warmup else 0
    breakdown = {
        key: statistics.median(b[key] for b in busy) if busy else None
        for key in ("input_rows", "duration_s", "read_s", "aggregate_s", "write_s")
    }
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "run": run,
        "produced_events": report.events,
        "produced_events_per_s": round(report.events_per_second, 1),
        "processed_events_per_s": round(throughput, 1) if throughput else None,
        "capacity_events_per_s": round(capacity, 1) if capacity else None,
        "batches_in_window": len(steady),
        "batch_median": breakdown,
        "batches": [
            {
                k: b.get(k)
                for k in (
                    "batch_id",
                    "input_rows",
                    "duration_s",
                    "read_s",
                    "aggregate_s",
                    "write_s",
                    "documents",
                    "lag",
                    "groups",
                )
            }
            for b in steady
        ],
        "processed_events_total": processed_total,
        "processed_events_per_s_overall": round(processed_total / (ended - began), 1),
        "markers_sent": len(markers.sent),
        "markers_seen": len(delays),
        "freshness_p50_s": _percentile(delays, 50),
        "freshness_p99_s": _percentile(delays, 99),
        "freshness_max_s": max(delays) if delays else None,
        "freshness_p50_lower_bound_s": _percentile(censored, 50),
        "freshness_p99_lower_bound_s": _percentile(censored, 99),
        "drain_s": round(drained_at - produced_end, 2) if drained_at else None,
        "final_lag": final.get("lag"),
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--server",
        default="secantusdb",
        choices=["secantusdb", "ferretdb"],
        help="the local MongoDB-wire server of the online store",
    )
    parser.add_argument("--rate", type=float, default=6000.0, help="events/s produced")
    parser.add_argument("--duration", type=float, default=130.0, help="seconds of production")
    parser.add_argument("--trigger", type=float, default=1.0, help="online job trigger (s)")
    parser.add_argument(
        "--max-offsets",
        type=int,
        default=50_000,
        help="Kafka records per micro-batch at most (the online job's default)",
    )
    parser.add_argument("--marker-every", type=float, default=0.25)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--port-base", type=int, default=34200)
    parser.add_argument("--data-dir", default="/tmp/twotier-bench-streaming")
    args = parser.parse_args()
    runs = [one_run(args, i) for i in range(args.runs)]
    steady = _median(runs, "processed_events_per_s")
    overall = _median(runs, "processed_events_per_s_overall")
    processed = steady if steady is not None else overall
    p99 = _median(runs, "freshness_p99_lower_bound_s")
    result = {
        "benchmark": "streaming online job (Kafka → Spark foreachBatch → MongoDB wire)",
        "project": PROJECT,
        "config": vars(args),
        "runs": runs,
        "median": {
            "produced_events_per_s": _median(runs, "produced_events_per_s"),
            "processed_events_per_s": processed,
            "capacity_events_per_s": _median(runs, "capacity_events_per_s"),
            "freshness_p50_s": _median(runs, "freshness_p50_s"),
            "freshness_p99_s": _median(runs, "freshness_p99_s"),
            "processed_events_per_s_overall": overall,
            "freshness_p50_lower_bound_s": _median(runs, "freshness_p50_lower_bound_s"),
            "freshness_p99_lower_bound_s": p99,
            "drain_s": _median(runs, "drain_s"),
        },
        "targets": {
            "events_per_s": TARGET_EVENTS_PER_S,
            "freshness_p99_s": TARGET_P99_S,
            "events_per_s_met": processed is not None and processed >= TARGET_EVENTS_PER_S,
            "freshness_p99_met": p99 is not None and p99 <= TARGET_P99_S,
        },
        "how_to_read": "freshness_p*_s cover only the markers that became visible; "
        "*_lower_bound_s count unseen markers at their wait so far (the targets use these). "
        "processed_events_per_s is over the steady window's batches; *_overall divides all "
        "events processed after warm-up by production + drain time.",
        "breakdown_source": "<data_dir>/jobs/memes/online.json per batch "
        "(read_s, aggregate_s, write_s written by the online job)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "2 cores shared with other workloads; Kafka, the online store, Spark and the "
            "producer all run on this machine",
        },
    }
    emit(result, RESULTS)


if __name__ == "__main__":
    main()
