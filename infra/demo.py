"""The walking skeleton end to end on the local stack, explaining itself as it goes.

``python -m twotier.infra.demo`` (what ``make demo`` runs):

1. start the local stack (Kafka, FerretDB, MLflow, Dagster, Ray; Spark jars cached);
2. replay MovieLens ratings into the project's Kafka topic (skipped when already there);
3. the Spark streaming job writes per-user counters into FerretDB, exactly once;
4. Dagster runs the project's asset graph: events into ClickHouse (chdb) with data checks,
   feature snapshots, monthly point-in-time training sets, tier one (ALS → ONNX top-k) and
   tier two (XGBoost → ONNX), parity gates, MLflow runs, blocking checks, and the promotion
   of both tiers to ``champion``;
5. Ray Serve deploys the scoring app, which pulls the models by alias;
6. tier one's champion proposes candidate movies for a user, and one HTTP request scores
   them with tier two's champion on the online features (FerretDB).

Every step shells out to the ``twotier`` CLI, so the demo runs exactly what a person would.
It can be run again: the replay is skipped when the topic already holds the events.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from twotier.config import Settings, load_settings
from twotier.naming import events_topic, model_name, online_collection

console = Console(highlight=False)


def _step(number: int, title: str, why: str) -> None:
    console.rule(f"[bold]{number}. {title}")
    console.print(f"[dim]{why}[/dim]")


def _twotier(*args: str) -> None:
    exe = shutil.which("twotier", path=str(Path(sys.executable).parent)) or "twotier"
    started = time.monotonic()
    console.print(f"[cyan]$ twotier {' '.join(args)}[/cyan]")
    rc = subprocess.run([exe, *args], check=False).returncode
    if rc != 0:
        console.print(f"[bold red]demo stopped:[/bold red] `twotier {' '.join(args)}` exited {rc}")
        raise SystemExit(rc)
    console.print(f"[dim]done in {time.monotonic() - started:.1f} s[/dim]")


def _events_in_topic(settings: Settings, project: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    try:
        partitions = consumer.partitions_for_topic(events_topic(project)) or set()
        tps = [TopicPartition(events_topic(project), p) for p in partitions]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def _expected_events(dataset: Path, limit: int) -> int:
    from twotier.replay import RatingMapping, read_ratings

    mapping = RatingMapping()
    ratings = read_ratings(dataset, limit)
    extra = sum(
        1
        for r in ratings
        if r.rating >= mapping.smile_at_least or r.rating <= mapping.dislike_at_most
    )
    return len(ratings) + extra


def _first_users(dataset: Path, limit: int, n: int) -> list[str]:
    from twotier.replay import read_ratings

    users: list[str] = []
    for rating in read_ratings(dataset, limit):
        if str(rating.user_id) not in users:
            users.append(str(rating.user_id))
        if len(users) == n:
            break
    return users


def _user_counters(settings: Settings, project: str, users: list[str]) -> dict[str, dict[str, Any]]:
    from twotier.online_store import connect

    group = settings.project_features(project).group("user_stats")
    with connect(settings) as store:
        return store.get_many(online_collection(project, group.key), users)


def _score_for_user(settings: Settings, project: str, user: str) -> None:
    from twotier.features import OnlineFeatures
    from twotier.models.tier_one import TierOneSession
    from twotier.registry import load_onnx_bytes, resolve

    uri = settings.mlflow.uri
    tier_one = model_name(project, "tier1", "candidates")
    ref = resolve(uri, tier_one, "champion")
    session = TierOneSession(load_onnx_bytes(uri, tier_one, ref.version))
    candidates = session.candidates([user], k=10)[user]
    console.print(f"tier one {tier_one} v{ref.version}@champion proposes {candidates}")
    with OnlineFeatures(settings) as features:
        matrix = features.matrix(project, "ranker", user, candidates)
    url = f"http://{settings.ray.host}:{settings.ray.serve_port}/v1/{project}/score"
    body = {"model": "ranker", "tier": "tier2", "alias": "champion", "rows": matrix.tolist()}
    console.print(f"[cyan]POST {url}[/cyan] ({len(candidates)} candidate movies for user {user})")
    response = httpx.post(url, json=body, timeout=60)
    response.raise_for_status()
    answer = response.json()
    table = Table(title=f"user {user}: {answer['model']} v{answer['version']} @{answer['alias']}")
    table.add_column("movie")
    table.add_column("tier-one rank", justify="right")
    table.add_column("P(smile)", justify="right")
    ranked = sorted(
        enumerate(zip(candidates, answer["scores"], strict=True)), key=lambda p: -p[1][1]
    )
    for rank, (item, score) in ranked:
        table.add_row(item, str(rank + 1), f"{score:.3f}")
    console.print(table)


def run(settings: Settings, project: str, dataset: Path, limit: int) -> None:
    """Run the skeleton end to end against the local stack of ``settings``."""
    _step(1, "Start the local stack", "Real services on 127.0.0.1, downloads cached.")
    _twotier("up")

    _step(2, "Replay MovieLens into Kafka", f"The first {limit} ratings become events.")
    expected = _expected_events(dataset, limit)
    present = _events_in_topic(settings, project)
    if present >= expected:
        console.print(f"topic {events_topic(project)} already holds {present} events: skipped")
    else:
        _twotier("replay", "--project", project, "--dataset", str(dataset), "--limit", str(limit))

    _step(3, "Spark streaming → online store", "Per-user counters in FerretDB, exactly once.")
    _twotier("stream", "--project", project, "--available-now")
    users = _first_users(dataset, limit, 3)
    counters = _user_counters(settings, project, users)
    for user in users:
        doc = counters.get(user, {})
        shown = {k: doc.get(k, 0) for k in ("views", "smiles", "dislikes", "rating_sum")}
        console.print(f"  user {user}: {shown}")

    _step(
        4,
        "Dagster: the asset graph, from events to promotion",
        "events → ClickHouse (chdb) → feature snapshots → monthly PIT training sets → "
        "ALS + XGBoost → ONNX (parity) → MLflow → checks → champion of both tiers.",
    )
    _twotier("materialize", "--project", project)

    ranker = model_name(project, "tier2", "ranker")
    _step(5, "Ray Serve: deploy", f"Pulls models:/{ranker}@champion (and tier one) by alias.")
    _twotier("deploy")

    _step(6, "Both tiers", "Tier-one candidates, scored by tier two over HTTP (online features).")
    user = next((u for u in users if counters.get(u)), users[0])
    _score_for_user(settings, project, user)

    console.rule("[bold green]demo finished")
    console.print(f"Dagster UI:  http://{settings.dagster.host}:{settings.dagster.port}")
    console.print(f"MLflow UI:   {settings.mlflow.uri}")
    console.print(f"Serving API: http://{settings.ray.host}:{settings.ray.serve_port}/docs")
    console.print("Stop everything with `make down` (or `twotier down`).")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", default=None)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/movielens-small"))
    parser.add_argument("--limit", type=int, default=20000)
    args = parser.parse_args(argv)
    settings = load_settings()
    run(settings, args.project or settings.project, args.dataset.resolve(), args.limit)


if __name__ == "__main__":
    main()
