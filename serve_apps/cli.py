"""``twotier deploy | score | recommend``: the Ray Serve application on the local stack."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from twotier.cli import ProjectOption, console, fail, progress_lines, project_of, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
GroupOption = Annotated[
    str | None, typer.Option("--group", "-g", help="Serve this A/B group instead of the user's.")
]


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


def parse_rows(text: str) -> list[list[float | None]]:
    """``--rows``: a JSON list of rows, each a list of numbers (or null for a default).

    Raises:
        ValueError: Not JSON, or not a list of lists of numbers; the message shows the form.
    """
    example = "e.g. --rows '[[1, 0, 3.5], [2, 1, null]]'"
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--rows is not valid JSON ({exc.msg}): {text!r}; {example}") from None
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"--rows must be a JSON list of rows (lists of numbers); {example}")
    for row in rows:
        for value in row:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"--rows: {value!r} is not a number; {example}")
    return rows


def _items(text: str | None) -> list[str]:
    return [i.strip() for i in (text or "").split(",") if i.strip()]


def _titles(settings: Any, project: str, item_ids: list[str]) -> dict[str, str]:
    """Item titles from the item data, if it is reachable (else none: ids only)."""
    from twotier.items import ItemDataError, read_items

    try:
        found = read_items(settings, project, item_ids)
    except ItemDataError:
        return {}
    return {i: str(item.attributes.get("title", "")) for i, item in found.items()}


def _ranked(title: str, first: str, entries: list[dict[str, Any]], titles: dict[str, str]) -> Table:
    """A ranked table of ``entries`` (``item_id``, ``score``) with the items' titles."""
    table = Table(title=title)
    table.add_column(first, justify="right")
    table.add_column("item")
    table.add_column("title", max_width=44, overflow="ellipsis", no_wrap=True)
    table.add_column("score", justify="right")
    for rank, entry in enumerate(entries, start=1):
        item = entry["item_id"]
        table.add_row(
            str(rank), escape(item), escape(titles.get(item, "")), f"{entry['score']:.4f}"
        )
    return table


def _served(answer: dict[str, Any]) -> str:
    models = ", ".join(
        f"{m['tier']} v{m['version']} ({m['alias']}{', fallback' if m.get('fallback') else ''})"
        for m in answer.get("models", [])
    )
    group = answer.get("group") or "-"
    return f"experiment {answer.get('experiment') or '-'}, group {group}; {models}"


def score(
    user: Annotated[
        str | None,
        typer.Argument(metavar="USER", help="A user: score --items for them with tier two."),
    ] = None,
    items: Annotated[
        str | None, typer.Option("--items", "-i", help="Comma-separated item ids to rank.")
    ] = None,
    project: ProjectOption = None,
    rows: Annotated[
        str | None,
        typer.Option(help="Instead of a user: JSON feature rows in the model's column order."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model name within the tier.")] = "ranker",
    tier: Annotated[str, typer.Option(help="Model tier (with --rows).")] = "tier2",
    alias: Annotated[str, typer.Option(help="Registry alias (with --rows).")] = "champion",
    group: GroupOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rank items for a user with tier two (``score USER --items 1,2,3``), or score raw
    feature rows (``score --rows '[[...]]'``)."""
    from twotier.serve_apps.deploy import ServingError, score_over_http, second_tier_over_http

    settings = state.settings()
    project = project_of(settings, project)
    if rows is not None:
        if user is not None or items:
            raise fail("give either USER and --items, or --rows, not both", code=2)
        try:
            parsed = parse_rows(rows)
        except ValueError as exc:
            raise fail(str(exc), code=2) from None
        answer = score_over_http(settings, project, parsed, model=model, tier=tier, alias=alias)
        typer.echo(json.dumps(answer, indent=2))
        return
    candidates = _items(items)
    if user is None or not candidates:
        raise fail("give a USER and --items 1,2,3 (or --rows for raw feature rows)", code=2)
    try:
        answer = second_tier_over_http(settings, project, user, candidates, model, group)
    except ServingError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    titles = _titles(settings, project, candidates)
    title = f"tier two for user {escape(user)} ({escape(project)})"
    console.print(_ranked(title, "rank", answer["ranking"], titles))
    console.print(f"[dim]{escape(_served(answer))}[/dim]")


def recommend(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user to recommend for.")],
    project: ProjectOption = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Items in the answer.")] = 10,
    alias: Annotated[
        str | None, typer.Option(help="Serve both tiers this alias (default: the A/B group's).")
    ] = None,
    group: GroupOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the running app for one user's recommendations and print them with titles."""
    from twotier.serve_apps.deploy import ServingError, recommend_over_http

    settings = state.settings()
    project = project_of(settings, project)
    extra: dict[str, Any] = {k: v for k, v in (("alias", alias), ("group", group)) if v}
    if not as_json:
        extra["attributes"] = ["title"]
    try:
        answer = recommend_over_http(settings, project, user, n, **extra)
    except ServingError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    titles = {
        i["item_id"]: str((i.get("attributes") or {}).get("title", "")) for i in answer["items"]
    }
    title = f"recommendations for user {escape(user)} ({escape(project)})"
    console.print(_ranked(title, "#", answer["items"], titles))
    notes = [f"{answer.get('candidates', 0)} candidates"]
    if answer.get("seen_excluded"):
        notes.append(f"{answer['seen_excluded']} seen ones removed")
    if answer.get("cold_user"):
        notes.append("cold user: tier one's fallback")
    if answer.get("features_degraded"):
        notes.append("features degraded (defaults)")
    console.print(f"[dim]{escape('; '.join(notes))}\n{escape(_served(answer))}[/dim]")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("deploy")(deploy)
    app.command("score")(score)
    app.command("recommend")(recommend)
