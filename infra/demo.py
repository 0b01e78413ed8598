"""The walking skeleton end to end on the local stack, explaining itself as it goes.

``python -m twotier.infra.demo`` (what ``make demo`` runs):

1. start the local stack (Kafka, FerretDB, MLflow, Dagster, Ray; Spark jars cached);
2. replay MovieLens ratings into the project's Kafka topic (skipped when already there);
3. the Spark streaming job writes per-user counters into FerretDB, exactly once;
4. Dagster loads the events into ClickHouse (chdb), trains XGBoost, converts it to ONNX,
   registers it in MLflow and moves the alias ``champion``;
5. Ray Serve deploys the scoring app, which pulls ``<project>.tier2.ranker@champion``;
6. one HTTP request scores candidate movies for a user, with the user's features from the
   online store and the items' from the offline store.

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


def _item_features(settings: Settings, project: str, limit: int) -> list[dict[str, Any]]:
    from twotier.offline_store import open_offline_store

    with open_offline_store(settings) as store:
        table = store.table(project, "events")
        frame = store.query_df(
            f"""
            SELECT item_id,
                   countIf(action = 'view') AS item_views,
                   countIf(action = 'smile') AS item_smiles,
                   sumIf(value, action = 'view') AS item_value_sum
            FROM {table} FINAL
            GROUP BY item_id ORDER BY item_views DESC, item_id LIMIT {int(limit)}
            """
        )
    records: list[dict[str, Any]] = frame.to_dict("records")
    return records


def _rate(part: float, whole: float) -> float:
    return float(part) / float(whole) if whole else 0.0


def _score_for_user(settings: Settings, project: str, user: str, counters: dict[str, Any]) -> None:
    items = _item_features(settings, project, limit=10)
    views = float(counters.get("views", 0))
    user_features = {
        "user_views": views,
        "user_smiles": float(counters.get("smiles", 0)),
        "user_smile_rate": _rate(counters.get("smiles", 0), views),
        "user_mean_value": _rate(counters.get("rating_sum", 0), views),
    }
    rows = [
        {
            **user_features,
            "item_views": float(i["item_views"]),
            "item_smiles": float(i["item_smiles"]),
            "item_smile_rate": _rate(i["item_smiles"], i["item_views"]),
            "item_mean_value": _rate(i["item_value_sum"], i["item_views"]),
        }
        for i in items
    ]
    url = f"http://{settings.ray.host}:{settings.ray.serve_port}/v1/{project}/score"
    body = {"model": "ranker", "tier": "tier2", "alias": "champion", "features": rows}
    console.print(f"[cyan]POST {url}[/cyan] ({len(rows)} candidate movies for user {user})")
    response = httpx.post(url, json=body, timeout=60)
    response.raise_for_status()
    answer = response.json()
    table = Table(title=f"user {user}: {answer['model']} v{answer['version']} @{answer['alias']}")
    table.add_column("movie")
    table.add_column("views", justify="right")
    table.add_column("P(smile)", justify="right")
    ranked = sorted(zip(items, answer["scores"], strict=True), key=lambda p: -p[1])
    for item, score in ranked:
        table.add_row(str(item["item_id"]), str(item["item_views"]), f"{score:.3f}")
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
        "Dagster: offline load, train, ONNX, register, promote",
        "events → ClickHouse (chdb) → XGBoost → onnxmltools → MLflow → alias champion.",
    )
    _twotier("materialize", "--project", project)

    ranker = model_name(project, "tier2", "ranker")
    _step(5, "Ray Serve: deploy", f"Pulls models:/{ranker}@champion by alias.")
    _twotier("deploy")

    _step(6, "Score over HTTP", "User features online (FerretDB), item features offline.")
    user = next((u for u in users if counters.get(u)), users[0])
    _score_for_user(settings, project, user, counters.get(user, {}))

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
