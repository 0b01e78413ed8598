"""The walking skeleton end to end on the local stack, explaining itself as it goes.

``python -m twotier.infra.demo`` (what ``make demo`` runs):

1. start the local stack (Kafka, SecantusDB, MLflow, Dagster, Ray; Spark jars cached);
2. replay MovieLens ratings into the project's Kafka topic (skipped when already there);
3. the Spark streaming job writes per-user counters into the online store, exactly once;
4. Dagster runs the project's asset graph: events into ClickHouse (chdb) with data checks,
   feature snapshots, monthly point-in-time training sets, tier one (ALS → ONNX top-k) and
   tier two (XGBoost → ONNX), parity gates, MLflow runs, blocking checks, and the promotion
   of both tiers to ``champion``;
5. Ray Serve deploys the scoring app, which pulls the models by alias;
6. tier one's champion proposes candidate movies for a user, and one HTTP request scores
   them with tier two's champion on the online features (SecantusDB);
7. a challenger is trained and the A/B experiment serves it to its treatment group;
8. one HTTP request hot-swaps ``champion`` to the challenger's version;
9. the readout: recommendations for the most active later users, their real later
   ratings replayed (re-timed to now), attribution, and the per-group table.

Every step shells out to the ``twotier`` CLI, so the demo runs exactly what a person would.
It can be run again: the replay is skipped when the topic already holds the events.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from twotier.config import Settings, load_settings
from twotier.naming import events_topic, model_name, online_collection

console = Console(highlight=False)


def _step(number: int, title: str, why: str) -> None:
    console.rule(f"[bold]{number}. {title}")
    console.print(f"[dim]{why}[/dim]")


NOISE = re.compile(
    "|".join(
        [
            r"WARNING: Using incubator modules",
            r"WARN NativeCodeLoader",
            r"log4j2?-defaults|Setting default log level|To adjust logging level",
            r"FutureWarning: PySpark|require_minimum_pandas_version",
            r"WARN SparkConf: Note that spark\.local\.dir",
            r"WARN ResolveWriteToStream",
            r"SupersessionWarning|return callback\(",
            r"BetaWarning|return SensorDefinition\(",
            r"abstract_store: Waiting up to",
            r"Connecting to existing Serve app",
            r"mlflow\.tracking\.fluent: Experiment with name",
        ]
    )
)
"""Lines of the engines' own start-up notices that tell a demo viewer nothing."""


def _twotier(*args: str) -> None:
    exe = shutil.which("twotier", path=str(Path(sys.executable).parent)) or "twotier"
    started = time.monotonic()
    # Quoted as a shell would need it, so the line can be pasted.
    line = shlex.join(["twotier", *args])
    console.print(f"[cyan]$ {escape(line)}[/cyan]")
    process = subprocess.Popen(
        [exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    hidden = 0
    assert process.stdout is not None
    for out in process.stdout:
        if NOISE.search(out):
            hidden += 1
        else:
            sys.stdout.write(out)
            sys.stdout.flush()
    rc = process.wait()
    if rc != 0:
        console.print(f"[bold red]demo stopped:[/bold red] `{escape(line)}` exited {rc}")
        raise SystemExit(rc)
    notices = f"; {hidden} JVM/library notices hidden" if hidden else ""
    console.print(f"[dim]done in {time.monotonic() - started:.1f} s{notices}[/dim]")


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


def _titles(dataset: Path) -> dict[str, str]:
    import csv

    with open(dataset / "movies.csv", newline="", encoding="utf-8") as f:
        return {row["movieId"]: row["title"] for row in csv.DictReader(f)}


def _offline_metrics(settings: Settings, project: str, alias: str) -> dict[str, float]:
    """Hold-out metrics logged with the tier-two version ``alias`` points at."""
    from twotier.registry import client, resolve

    ref = resolve(settings.mlflow.uri, model_name(project, "tier2", "ranker"), alias)
    if ref.run_id is None:
        return {}
    return dict(client(settings.mlflow.uri).get_run(ref.run_id).data.metrics)


def _titled(title: str) -> Table:
    """A table whose title is printed on its own line first (a narrow table would wrap it)."""
    console.print(f"[bold]{title}[/bold]")
    return Table()


def _metric(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _serve(settings: Settings) -> str:
    return f"http://{settings.ray.host}:{settings.ray.serve_port}"


def _recommend(settings: Settings, project: str, user: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{_serve(settings)}/v1/{project}/recommend",
        json={"user_id": user, "n": 5, **extra},
        timeout=60,
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def _versions(answer: dict[str, Any]) -> str:
    return ", ".join(f"{m['name']} v{m['version']}@{m['alias']}" for m in answer["models"])


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _show_recommendations(
    settings: Settings, project: str, users: list[str], titles: dict[str, str]
) -> None:
    metrics = _offline_metrics(settings, project, "champion")
    known, cold = metrics.get("eval_known_users"), metrics.get("eval_cold_users")
    table = _titled(
        f"champion's hold-out NDCG@10: {_count(known)} known users (tier one trained on "
        f"them), {_count(cold)} cold (recent-popularity fallback)"
    )
    table.add_column("users")
    for header in ("two tiers", "tier one", "popularity", "recent pop."):
        table.add_column(header, justify="right")
    for label, infix in (("all", ""), ("known", "known_"), ("cold", "cold_")):
        table.add_row(
            label,
            *(
                _metric(metrics, f"{system}_{infix}ndcg_at_10")
                for system in ("two_tier", "tier_one", "popularity", "recent_popularity")
            ),
        )
    console.print(table)
    for baseline in ("popularity", "recent_popularity"):
        key = f"two_tier_known_ndcg_ratio_vs_{baseline}"
        name = baseline.replace("_", " ")
        if _metric(metrics, key) == "n/a":
            console.print(
                f"[dim]known users, two tiers / {name}: n/a ({name} found nothing for "
                "them, so there is no ratio)[/dim]"
            )
            continue
        low, high = _metric(metrics, key + "_ci_low"), _metric(metrics, key + "_ci_high")
        console.print(
            f"[dim]known users, two tiers / {name}: {_metric(metrics, key)}x (95% bootstrap "
            f"{escape(f'[{low}, {high}]')})[/dim]"
        )
    console.print(
        f"[dim]Recall@100 {_metric(metrics, 'two_tier_recall_at_100')} vs popularity "
        f"{_metric(metrics, 'popularity_recall_at_100')}; tier-two AUC "
        f"{_metric(metrics, 'auc')}. The beats_popularity check says 'inconclusive' (WARN) "
        "below 30 known users instead of passing.[/dim]"
    )
    for user in users:
        console.print(f"[cyan]POST {_serve(settings)}/v1/{project}/recommend[/cyan] user {user}")
        answer = _recommend(settings, project, user)
        ranked = _titled(f"user {user}: {_versions(answer)}")
        ranked.add_column("#", justify="right")
        ranked.add_column("movie")
        ranked.add_column("score", justify="right")
        for rank, item in enumerate(answer["items"], 1):
            title = titles.get(item["item_id"], item["item_id"])
            ranked.add_row(str(rank), title, f"{item['score']:.3f}")
        console.print(ranked)
        fallback = " (a user new to tier one: its recent-popularity fallback)"
        console.print(
            f"[dim]{answer['candidates']} candidates (tier one's, then recent popularity), "
            f"{answer['seen_excluded']} movies the user already rated removed"
            f"{fallback if answer.get('cold_user') else ''}[/dim]"
        )


def _ab_side_by_side(
    settings: Settings, project: str, users: list[str], titles: dict[str, str]
) -> None:
    experiment = settings.project_features(project).experiments[0]
    table = _titled(f"A/B experiment {experiment.name}: who gets which models")
    for column in ("user", "group", "tier one / two", "top movie"):
        table.add_column(column, justify="right" if column == "user" else "left")
    names: set[str] = set()
    for user in users:
        answer = _recommend(settings, project, user)
        models = sorted(answer["models"], key=lambda m: ".tier2." in m["name"])
        names.update(m["name"] for m in models)
        aliases = {m["alias"] for m in models}
        served = (
            " / ".join(f"v{m['version']}" for m in models) + f" @{aliases.pop()}"
            if len(aliases) == 1
            else " / ".join(f"v{m['version']}@{m['alias']}" for m in models)
        )
        top = answer["items"][0]["item_id"] if answer["items"] else "-"
        table.add_row(user, str(answer.get("group")), served, titles.get(top, top))
    console.print(table)
    console.print(f"[dim]models: {', '.join(sorted(names))}[/dim]")


def _move_champion(settings: Settings, project: str, version: str) -> dict[str, Any]:
    url = f"{_serve(settings)}/v1/admin/models"
    body = {
        "project": project,
        "tier": "tier2",
        "model": "ranker",
        "alias": "champion",
        "version": version,
    }
    console.print(f"[cyan]POST {url}[/cyan] '{json.dumps(body)}'")
    token = settings.serving.admin_token.get_secret_value()
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    response.raise_for_status()
    swap: dict[str, Any] = response.json()
    console.print(
        f"{swap['name']}@champion: v{swap['previous_version']} → v{swap['version']} on "
        f"{swap['replicas']} replica(s) in {swap['seconds']:.2f} s"
    )
    return swap


def assign_group(settings: Settings, project: str, user: str) -> str | None:
    """The A/B group the project's first experiment assigns ``user`` to (None: none)."""
    from twotier.experiments import assign

    experiments = settings.project_features(project).experiments
    return assign(project, experiments[0], user) if experiments else None


def _hot_swap(settings: Settings, project: str, user: str) -> None:
    """Swap champion to the challenger, then keep it only if it wins on the hold-out."""
    from twotier.registry import resolve

    name = model_name(project, "tier2", "ranker")
    champion = resolve(settings.mlflow.uri, name, "champion").version
    challenger = resolve(settings.mlflow.uri, name, "challenger").version
    ours = _offline_metrics(settings, project, "champion")
    theirs = _offline_metrics(settings, project, "challenger")
    table = _titled(f"champion v{champion} vs challenger v{challenger} (hold-out NDCG@10)")
    table.add_column("users")
    table.add_column(f"champion v{champion}", justify="right")
    table.add_column(f"challenger v{challenger}", justify="right")
    for label, key in (
        ("all", "two_tier_ndcg_at_10"),
        ("known", "two_tier_known_ndcg_at_10"),
        ("cold", "two_tier_cold_ndcg_at_10"),
    ):
        table.add_row(label, _metric(ours, key), _metric(theirs, key))
    console.print(table)
    swap = _move_champion(settings, project, challenger)
    answer = _recommend(settings, project, user, group="control")
    assigned = assign_group(settings, project, user)
    forced = "" if assigned == "control" else f" (assigned to {assigned}; forced to control)"
    console.print(f"user {user}{forced} is now served {_versions(answer)}")
    key = "two_tier_ndcg_at_10"
    if key in ours and key in theirs and theirs[key] < ours[key]:
        console.print(
            f"The challenger's NDCG@10 ({theirs[key]:.4f}) is below the champion's "
            f"({ours[key]:.4f}), so the demo does not keep it: the same request moves "
            "champion back."
        )
        _move_champion(settings, project, str(swap["previous_version"]))
    else:
        console.print("The challenger is at least as good on the hold-out: it stays champion.")


def run(settings: Settings, project: str, dataset: Path, limit: int) -> None:
    """Run the main job end to end against the local stack of ``settings``."""
    _step(1, "Start the local stack", "Real services on 127.0.0.1, downloads cached.")
    _twotier("up")

    _step(2, "Replay MovieLens into Kafka", f"The first {limit} ratings become events.")
    expected = _expected_events(dataset, limit)
    present = _events_in_topic(settings, project)
    if present >= expected:
        console.print(f"topic {events_topic(project)} already holds {present} events: skipped")
    else:
        _twotier("replay", "--project", project, "--dataset", str(dataset), "--limit", str(limit))

    server = settings.online_store.uri or settings.local_online_server
    _step(3, "Spark streaming → online store", f"Per-user counters in {server}, exactly once.")
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

    _step(5, "Ray Serve", "The app pulls both tiers' champions from MLflow by alias.")
    _twotier("deploy")

    _step(6, "Recommendations", "Tier one proposes, tier two ranks, seen movies are dropped.")
    titles = _titles(dataset)
    _show_recommendations(settings, project, users, titles)

    _step(
        7,
        "A challenger and an A/B experiment",
        "A bigger tier-two ranker is trained and promoted to the alias `challenger`; the "
        "experiment's treatment group is served it, the control group the champion.",
    )
    challenger = {
        "ops": {
            f"{project}__tier2_ranker": {"config": {"n_estimators": 120, "max_depth": 6}},
            f"{project}__promotion": {"config": {"alias": "challenger"}},
        }
    }
    _twotier("materialize", "--project", project, "--config-json", json.dumps(challenger))
    more_users = _first_users(dataset, limit, 8)
    _ab_side_by_side(settings, project, more_users, titles)

    _step(8, "Hot swap", "One HTTP request moves `champion` to the challenger's version.")
    _hot_swap(settings, project, users[0])

    if settings.project_features(project).experiments:
        _step(
            9,
            "The experiment's readout",
            f"Serve the {READOUT_USERS} users with the most later ratings, replay those "
            "ratings (their real later choices, re-timed to now), attribute every "
            "recommended movie the user then rated within the window, and compare the "
            "groups.",
        )
        _readout(settings, project, dataset, limit)

    console.rule("[bold green]demo finished")
    dagster = f"http://{settings.dagster.host}:{settings.dagster.port}"
    console.print(f"Dagster UI:     {dagster}/assets/{project}  (the project's asset graph)")
    console.print(f"MLflow runs:    {_mlflow_runs_url(settings, project)}")
    console.print(f"MLflow models:  {settings.mlflow.uri}/#/models")
    console.print(f"Serving API:    {_serve(settings)}/docs  (Swagger UI; /redoc too)")
    ray_dashboard = f"http://{settings.ray.host}:{settings.ray.gcs_port + 7}"
    console.print(f"Ray dashboard:  {ray_dashboard}/#/serve")
    console.print("A tour of what to open where: docs/tour.md")
    console.print("Stop everything with `make down` (or `twotier down`).")


READOUT_USERS = 400
"""Users the readout step serves (those with the most ratings after the replayed ones)."""
READOUT_K = 20
"""Movies recommended to each of them."""


def _later_users(dataset: Path, limit: int, n: int) -> list[str]:
    """The ``n`` users with the most ratings after the first ``limit`` (most active first)."""
    from collections import Counter

    from twotier.replay import read_ratings

    counts = Counter(str(r.user_id) for r in read_ratings(dataset)[limit:])
    return [user for user, _ in counts.most_common(n)]


def _serve_cohort(settings: Settings, project: str, users: list[str]) -> int:
    """Ask for ``READOUT_K`` recommendations for each user, randomised (nothing forced)."""
    served = 0
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        for k, user in enumerate(users, start=1):
            response = client.post(
                f"{_serve(settings)}/v1/{project}/recommend",
                json={"user_id": user, "n": READOUT_K},
            )
            response.raise_for_status()
            served += len(response.json()["items"])
            if k % 100 == 0 or k == len(users):
                console.print(f"  served {k}/{len(users)} users, {served} recommendations")
    console.print(f"[dim]served in {time.monotonic() - started:.1f} s[/dim]")
    return served


def _wait_for_log(settings: Settings, project: str, before: int, served: int) -> None:
    """Wait until serving's log thread has put the served items on the topic."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logged = _events_in_topic(settings, project) - before
        if logged >= served:
            console.print(f"  {logged} recommendation events logged to {events_topic(project)}")
            return
        time.sleep(1)
    console.print(f"  [yellow]only {logged} of {served} recommendations were logged[/yellow]")


def _readout(settings: Settings, project: str, dataset: Path, limit: int) -> None:
    from datetime import UTC, datetime

    experiment = settings.project_features(project).experiments[0]
    everything = _expected_events(dataset, 10**9)
    before = _events_in_topic(settings, project)
    if before >= everything:
        console.print(f"topic {events_topic(project)} already holds the later ratings: skipped")
    else:
        served = _serve_cohort(settings, project, _later_users(dataset, limit, READOUT_USERS))
        _wait_for_log(settings, project, before, served)
        _twotier(
            "replay",
            "--project",
            project,
            "--dataset",
            str(dataset),
            "--skip",
            str(limit),
            "--retime-now",
            "--no-items",
        )
    now = datetime.now(UTC)
    today = now.strftime("%Y-%m-%d")
    _twotier(  # the new events and recommendations into ClickHouse
        "materialize", "--project", project, "--select", f"key:{project}/events_offline"
    )
    _twotier(
        "materialize",
        "--project",
        project,
        "--select",
        f"key:{project}/recommendation_outcomes or key:{project}/experiment_readout",
        "--partition-range",
        f"{today}...{today}",
    )
    _twotier("experiments", "--project", project)
    console.print(
        "[dim]The readout counts every randomised recommendation of the day: these 400 "
        "users' and those of the steps before (forced groups are left out).[/dim]"
    )
    plot = settings.data_dir / "readouts" / project / f"{experiment.name}-shuffle"
    plots = sorted(plot.parent.glob(f"{plot.name}*.png"), key=lambda p: p.stat().st_mtime)
    if plots:
        console.print(f"readout plot (hit rate by day per group, 95% intervals): {plots[-1]}")


def _mlflow_runs_url(settings: Settings, project: str) -> str:
    """The runs table of the project's experiment (MLflow 3 opens experiments elsewhere)."""
    from twotier.registry import client

    try:
        experiment = client(settings.mlflow.uri).get_experiment_by_name(project)
    except Exception:  # the link is a courtesy
        experiment = None
    if experiment is None:
        return f"{settings.mlflow.uri}/#/experiments"
    return f"{settings.mlflow.uri}/#/experiments/{experiment.experiment_id}/runs"


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
