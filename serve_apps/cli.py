"""``twotier deploy`` and ``twotier score``: the Ray Serve application on the local stack."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from twotier.cli import ProjectOption, console, progress_lines, state


def deploy() -> None:
    """Deploy (or update) the serving application on the running Ray cluster."""
    from twotier.serve_apps.deploy import deploy as deploy_app

    settings = state.settings()
    with progress_lines("deploying the serving application") as show:
        deploy_app(settings, show)
    console.print(
        f"[green]serving[/green] at http://{settings.ray.host}:{settings.ray.serve_port} "
        f"(API docs: /docs)"
    )


def score(
    project: ProjectOption = None,
    rows: Annotated[
        str, typer.Option(help="JSON list of feature rows, in the model's feature order.")
    ] = "[]",
    model: Annotated[str, typer.Option(help="Model name within the tier.")] = "ranker",
    tier: Annotated[str, typer.Option(help="Model tier.")] = "tier2",
    alias: Annotated[str, typer.Option(help="Registry alias to score with.")] = "champion",
) -> None:
    """Send one scoring request over HTTP and print the response."""
    from twotier.serve_apps.deploy import score_over_http

    settings = state.settings()
    project = project or settings.project
    response = score_over_http(
        settings, project, json.loads(rows), model=model, tier=tier, alias=alias
    )
    typer.echo(json.dumps(response, indent=2))


def recommend(
    user: Annotated[str, typer.Argument(help="The user to recommend for.")],
    project: ProjectOption = None,
    n: Annotated[int, typer.Option(help="Items in the answer.")] = 10,
    alias: Annotated[
        str | None, typer.Option(help="Serve both tiers this alias (default: the A/B group's).")
    ] = None,
) -> None:
    """Ask the running app for one user's recommendations and print the answer."""
    from twotier.serve_apps.deploy import recommend_over_http

    settings = state.settings()
    extra = {"alias": alias} if alias else {}
    answer = recommend_over_http(settings, project or settings.project, user, n, **extra)
    typer.echo(json.dumps(answer, indent=2))


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("deploy")(deploy)
    app.command("score")(score)
    app.command("recommend")(recommend)
