"""``twotier up | down | status | install | logs``: the local stack from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from twotier.cli import console, fail, progress_lines, state
from twotier.infra.service import ServiceStatus

OnlyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--only", help="Act on this service only (repeatable): kafka, online_store, mlflow, …"
    ),
]


def up(only: OnlyOption = None) -> None:
    """Start the local stack (idempotent); downloads and builds on first use, cached after."""
    from twotier.infra.stack import Stack

    settings = state.settings()
    stack = Stack(settings, only)
    started = time.monotonic()
    with progress_lines("starting the local stack") as show:
        stack.up(show)
    console.print(f"[green]stack up[/green] in {time.monotonic() - started:.1f} s")
    remember_stack(settings)
    _print_status(stack)


def down(only: OnlyOption = None) -> None:
    """Stop the local stack; leaves no process behind."""
    from twotier.infra.stack import Stack

    stack = Stack(state.settings(), only)
    with progress_lines("stopping the local stack") as show:
        stack.down(show)
    console.print("[green]stack down[/green]")


LAST_STACK = "last-stack.json"
"""In the cache folder: the data folder of the last ``twotier up``, for ``status`` elsewhere."""


def remember_stack(settings: object) -> None:
    """Record where the stack just started runs, so ``twotier status`` finds it from any folder."""
    import json

    from twotier.config import Settings

    assert isinstance(settings, Settings)
    settings.cache.mkdir(parents=True, exist_ok=True)
    (settings.cache / LAST_STACK).write_text(json.dumps({"data_dir": str(settings.data_dir)}))


def _stack_settings(settings: object) -> object:
    """``settings``, or — when its data folder holds no stack and none was configured —
    the settings pointed at the data folder of the last ``twotier up``."""
    import json
    import os

    from twotier.config import Settings

    assert isinstance(settings, Settings)
    default = Path(".twotier").resolve()
    configured = settings.data_dir != default or "TWOTIER_DATA_DIR" in os.environ
    if configured or (settings.data_dir / "run").is_dir():
        return settings
    try:
        last = Path(json.loads((settings.cache / LAST_STACK).read_text())["data_dir"])
    except (OSError, ValueError, KeyError):
        return settings
    if not (last / "run").is_dir():
        return settings
    console.print(f"[dim]no stack under {settings.data_dir}; showing the last one started[/dim]")
    return settings.model_copy(update={"data_dir": last})


def status(only: OnlyOption = None) -> None:
    """Show each service: running, healthy, pid, endpoint; exit 1 if one is not healthy."""
    from twotier.config import Settings
    from twotier.infra.stack import Stack

    settings = _stack_settings(state.settings())
    assert isinstance(settings, Settings)
    stack = Stack(settings, only)
    statuses = _print_status(stack)
    _print_online_store(settings)
    _print_jobs(settings)
    down = [s.name for s in statuses if not s.healthy]
    if down:
        console.print(
            f"[yellow]not healthy:[/yellow] {', '.join(down)}\n"
            "  `twotier up` starts them; `twotier logs SERVICE` shows why one failed"
        )
        raise typer.Exit(1)


def _print_online_store(settings: object) -> None:
    """Which MongoDB-wire server holds the online features, its licence, and how to switch."""
    from rich.markup import escape

    from twotier.config import Settings
    from twotier.infra.stack import make_service

    assert isinstance(settings, Settings)
    if settings.online_store.uri:
        console.print(
            f"online store: {escape(settings.online_store_uri)}\n"
            f"  declared as {settings.online_server_kind}; not started by twotier"
        )
        return
    service = make_service("online_store", settings)
    console.print(f"online store: {escape(service.describe())}")
    console.print(
        "  [dim]a real MongoDB: set online_store.uri (TWOTIER_ONLINE_STORE__URI)\n"
        "  the other local server: stack.online_server (secantusdb, ferretdb)[/dim]"
    )


def _print_jobs(settings: object) -> None:
    """One line per streaming job that has reported (status files under the data folder)."""
    from twotier.config import Settings

    assert isinstance(settings, Settings)
    try:
        from twotier.feature_jobs.status import all_statuses, job_summary
    except ImportError:  # feature jobs not installed alongside the stack
        return
    from twotier.feature_jobs.status import lags_now

    jobs = all_statuses(settings)
    lags = lags_now(settings, jobs)  # one Kafka connection for all jobs, short timeout
    for project, job in jobs.items():
        now = "unknown (Kafka down)" if lags is None else lags[project]
        console.print(f"{job_summary(job)}; lag now: {now}")


def install(only: OnlyOption = None) -> None:
    """Download and build everything the stack needs, without starting it."""
    from twotier.infra.stack import Stack

    with progress_lines("installing the local stack") as show:
        Stack(state.settings(), only).install(show)
    console.print("[green]installed[/green]")


def logs(
    service: Annotated[
        str,
        typer.Argument(
            metavar="SERVICE",
            help="kafka, online_store, secantusdb, ferretdb, mlflow, dagster or ray.",
        ),
    ],
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
) -> None:
    """Print the end of a service's log."""
    from twotier.infra.stack import ONLINE_STORE, SERVICE_CLASSES, make_service

    known = [*SERVICE_CLASSES, ONLINE_STORE]
    if service not in known:
        raise fail(f"no service {service!r}; the services are {', '.join(known)}", code=2)
    log = make_service(service, state.settings()).log_file
    if not log.exists():
        console.print(f"no log yet at {log}")
        raise typer.Exit(1)
    typer.echo("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def _print_status(stack: object) -> list[ServiceStatus]:
    from twotier.infra.stack import Stack

    assert isinstance(stack, Stack)
    statuses = stack.status()
    table = Table(title=f"twotier stack ({stack.settings.data_dir})")
    for column in ("service", "state", "pid", "endpoint"):
        table.add_column(column)
    for s in statuses:
        label = (
            "[green]healthy[/green]"
            if s.healthy
            else "[yellow]unhealthy[/yellow]"
            if s.running
            else "[dim]stopped[/dim]"
        )
        table.add_row(s.name, label, str(s.pid or ""), s.endpoint)
    console.print(table)
    return statuses


def register(app: typer.Typer) -> None:
    """Add the stack commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    for command in (up, down, status, install, logs):
        app.command(command.__name__)(command)
