"""``twotier projects | features | models | online``: what is declared, registered and stored.

Tables fit 80 columns; ``--json`` prints the same facts for scripts.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from twotier.cli import ProjectOption, console, fail, project_of, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _out() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def projects_command(as_json: JsonOption = False) -> None:
    """The declared projects: feature groups, models and experiments of each."""
    settings = state.settings()
    rows: list[dict[str, Any]] = []
    for name, features in settings.projects.items():
        rows.append(
            {
                "project": name,
                "default": name == settings.project,
                "feature_groups": [g.name for g in features.feature_groups],
                "models": [f"{m.tier}.{m.name}" for m in features.models],
                "experiments": [e.name for e in features.experiments],
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="projects (* = the default)")
    for column in ("project", "feature groups", "models", "experiments"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            f"{row['project']}{' *' if row['default'] else ''}",
            ", ".join(row["feature_groups"]),
            ", ".join(row["models"]) or "-",
            ", ".join(row["experiments"]) or "-",
        )
    _out().print(table)


def features_command(
    group: Annotated[
        str | None, typer.Argument(metavar="GROUP", help="One group: its features.")
    ] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """The project's feature groups and their model columns, in order."""
    settings = state.settings()
    project = project_of(settings, project)
    features = settings.project_features(project)
    if group is not None:
        try:
            chosen = features.group(group)
        except KeyError as exc:
            raise fail(f"project {project!r}: {exc.args[0]}", code=2) from None
        if as_json:
            typer.echo(chosen.model_dump_json(indent=1))
            return
        where = "item data" if chosen.static else "online" if chosen.online else ""
        if chosen.offline and not chosen.static:
            where += " + offline" if where else "offline"
        table = Table(title=f"{project}: {chosen.key} ({chosen.entity}; {where})")
        for column in ("feature", "kind", "of", "columns"):
            table.add_column(column, overflow="fold")
        for f in chosen.features:
            data = f.model_dump()
            of = data.get("action") or data.get("attribute") or data.get("of") or ""
            if data.get("numerator"):
                of = f"{data['numerator']}/{data['denominator']}"
            if data.get("by"):
                of += f" by {data['by']}"
            if data.get("half_life_days"):
                of += f", half-life {data['half_life_days']:g} d"
            table.add_row(f.name, f.kind, of, _columns(chosen, f.name))
        _out().print(table)
        return
    if as_json:
        typer.echo(
            json.dumps(
                {
                    g.name: {"entity": g.entity, "columns": g.columns()}
                    for g in features.feature_groups
                },
                indent=1,
            )
        )
        return
    table = Table(title=f"{project}: feature groups")
    for column in ("group", "entity", "kept", "columns"):
        table.add_column(column, overflow="fold")
    for g in features.feature_groups:
        kept = (
            "item data"
            if g.static
            else "+".join(k for k, on in (("online", g.online), ("offline", g.offline)) if on)
        )
        cols = g.columns()
        shown = ", ".join(cols[:4]) + (f" … ({len(cols)})" if len(cols) > 4 else "")
        table.add_row(g.name, g.entity, kept, shown or "- (stored only)")
    _out().print(table)
    for m in features.models:
        spec = features.model_spec(m.name)
        _out().print(f"model {m.tier}.{m.name}: {len(spec.columns())} input columns")


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's retries, when the tracking server is down."""
    import httpx

    if not uri.startswith("http"):
        return
    try:
        httpx.get(f"{uri}/health", timeout=3.0)
    except httpx.HTTPError as exc:
        raise fail(
            f"the model registry at {uri} does not answer ({type(exc).__name__}). "
            "Fix: `twotier up` (MLflow)"
        ) from None


def _short(exc: BaseException) -> str:
    """The first clause of a driver's error (pymongo appends its whole topology)."""
    return str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]


def _columns(group: Any, feature: str) -> str:
    cols = [c for c in group.columns() if c == feature or c.startswith(f"{feature}__")]
    if not cols:
        return "- (stored only)"
    return cols[0] if len(cols) == 1 else f"{cols[0]} … ({len(cols)})"


def models_command(project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Registered models of the project: versions, aliases and when each was made."""
    import datetime as dt

    from twotier.registry import RegistryUnreachable, client

    settings = state.settings()
    project = project_of(settings, project)
    uri = settings.mlflow.uri
    rows: list[dict[str, Any]] = []
    _check_reachable(uri)
    try:
        mlflow = client(uri)
        for model in mlflow.search_registered_models(filter_string=f"name LIKE '{project}.%'"):
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for v in mlflow.search_model_versions(f"name = '{model.name}'"):
                rows.append(
                    {
                        "model": model.name,
                        "version": int(v.version),
                        "aliases": sorted(aliases.get(str(v.version), [])),
                        "created": dt.datetime.fromtimestamp(
                            v.creation_timestamp / 1000, dt.UTC
                        ).strftime("%Y-%m-%d %H:%M"),
                        "run_id": v.run_id,
                    }
                )
    except RegistryUnreachable as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # MLflow raises its own kinds for an unreachable server
        raise fail(
            f"cannot read the model registry at {uri}: {exc}. Fix: `twotier up` (MLflow)"
        ) from None
    rows.sort(key=lambda r: (r["model"], -r["version"]))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print(
            f"no registered models of {project!r} at {uri} yet: `twotier materialize` trains "
            "and registers them"
        )
        return
    table = Table(title=f"{project}: registered models ({uri})")
    for column in ("model", "version", "aliases", "created (UTC)"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["model"], str(r["version"]), ", ".join(r["aliases"]) or "-", r["created"])
    _out().print(table)


def online_command(
    user: Annotated[
        str, typer.Argument(metavar="USER", help="The user whose online features to show.")
    ],
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """A user's online features now: every user group's stored values, by group."""
    from twotier.features.derive import raw_defaults
    from twotier.naming import online_collection
    from twotier.online_store import connect

    settings = state.settings()
    project = project_of(settings, project)
    groups = [
        g
        for g in settings.project_features(project).feature_groups
        if g.entity == "user" and g.from_events(online=True)
    ]
    found: dict[str, dict[str, float] | None] = {}
    try:
        with connect(settings) as store:
            for g in groups:
                docs = store.get_many(online_collection(project, g.key), [user], g.stored_fields())
                found[g.name] = docs.get(user)
    except Exception as exc:  # OnlineStoreError, or pymongo's own when the server is down
        raise fail(
            f"cannot read the online store at {settings.online_store_uri}: {_short(exc)}. "
            "Fix: `twotier up`"
        ) from None
    if as_json:
        typer.echo(json.dumps({"project": project, "user_id": user, "groups": found}, indent=1))
        return
    if all(doc is None for doc in found.values()):
        console.print(
            f"user {user!r} of {project!r} has no online features yet (a new user: every "
            "feature reads as its default)"
        )
        return
    table = Table(title=f"{project}: online features of user {escape(user)}")
    for column in ("group", "field", "value"):
        table.add_column(column, overflow="fold")
    for g in groups:
        doc = found[g.name] or {}
        defaults = raw_defaults(g)
        for field in g.stored_fields():
            if field in doc:
                table.add_row(g.name, field, f"{doc[field]:g}")
        missing = [f for f in g.stored_fields() if f not in doc]
        if missing:
            table.add_row(
                g.name, f"({len(missing)} others)", f"defaults ({defaults[missing[0]]:g})"
            )
    _out().print(table)


def register(app: typer.Typer) -> None:
    """Add the inspection commands to the ``twotier`` app."""
    app.command("projects")(projects_command)
    app.command("features")(features_command)
    app.command("models")(models_command)
    app.command("online")(online_command)
