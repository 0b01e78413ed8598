"""``twotier up | down | status | install | logs``: the local stack from the command line."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from twotier.cli import console, fail, progress_lines, state

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
    _print_status(stack)


def down(only: OnlyOption = None) -> None:
    """Stop the local stack; leaves no process behind."""
    from twotier.infra.stack import Stack

    stack = Stack(state.settings(), only)
    with progress_lines("stopping the local stack") as show:
        stack.down(show)
    console.print("[green]stack down[/green]")


def status(only: OnlyOption = None) -> None:
    """Show each service: running, healthy, pid, endpoint."""
    from twotier.infra.stack import Stack

    settings = state.settings()
    _print_status(Stack(settings, only))
    _print_online_store(settings)
    _print_jobs(settings)


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
    for job in all_statuses(settings).values():
        console.print(job_summary(job))


def install(only: OnlyOption = None) -> None:
    """Download and build everything the stack needs, without starting it."""
    from twotier.infra.stack import Stack

    with progress_lines("installing the local stack") as show:
        Stack(state.settings(), only).install(show)
    console.print("[green]installed[/green]")


def logs(
    service: Annotated[
        str,
        typer.Argument(help="kafka, online_store, secantusdb, ferretdb, mlflow, dagster or ray."),
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


def _print_status(stack: object) -> None:
    from twotier.infra.stack import Stack

    assert isinstance(stack, Stack)
    table = Table(title=f"twotier stack ({stack.settings.data_dir})")
    for column in ("service", "state", "pid", "endpoint"):
        table.add_column(column)
    for s in stack.status():
        label = (
            "[green]healthy[/green]"
            if s.healthy
            else "[yellow]unhealthy[/yellow]"
            if s.running
            else "[dim]stopped[/dim]"
        )
        table.add_row(s.name, label, str(s.pid or ""), s.endpoint)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the stack commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    for command in (up, down, status, install, logs):
        app.command(command.__name__)(command)
