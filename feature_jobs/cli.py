"""``twotier stream``: the project's Spark online feature job on the local stack."""

from __future__ import annotations

from typing import Annotated

import typer

from twotier.cli import ProjectOption, console, progress_lines, project_of, state


def stream(
    project: ProjectOption = None,
    available_now: Annotated[
        bool,
        typer.Option("--available-now", help="Process what is in Kafka now, then stop."),
    ] = False,
    trigger_seconds: Annotated[
        float | None,
        typer.Option(help="Micro-batch interval (default: spark.trigger_seconds)."),
    ] = None,
    retry_attempts: Annotated[
        int | None,
        typer.Option(
            help="Give up after this many faults in a row (0: never; default: never, "
            "3 with --available-now)."
        ),
    ] = None,
) -> None:
    """Run the Spark Structured Streaming job that keeps the online store fresh."""
    from twotier.feature_jobs.online_job import online_backoff, run_online

    settings = state.settings()
    project = project_of(settings, project)
    mode = "available data" if available_now else "continuous stream (Ctrl-C stops)"
    retry = online_backoff(attempts=retry_attempts, available_now=available_now)
    with progress_lines(f"online feature job for {project}: {mode}") as show:
        run_online(
            settings,
            project,
            available_now=available_now,
            progress=show,
            retry=retry,
            trigger_seconds=trigger_seconds,
        )
    console.print(f"[green]online feature job finished[/green] for {project}")


def jobs(
    project: ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status JSON.")] = False,
) -> None:
    """Show what the online feature jobs did last: batch, rows, dead letters, timings, lag."""
    import json
    import sys
    import time

    from rich.console import Console
    from rich.table import Table

    from twotier.feature_jobs.status import all_statuses, job_summary, status_path

    settings = state.settings()
    statuses = all_statuses(settings)
    if project is not None:
        project = project_of(settings, project)
        statuses = {p: s for p, s in statuses.items() if p == project}
    if as_json:
        typer.echo(json.dumps(statuses, indent=1))
        return
    if not statuses:
        where = status_path(settings, project or "<project>")
        console.print(f"no online job has reported yet ({where}); start one with `twotier stream`")
        return
    now_ms = int(time.time() * 1000)
    table = Table(title="online feature jobs")
    for column in ("project", "state", "batch", "rows", "dead letters", "written"):
        table.add_column(column, no_wrap=True)
    table.add_column("seconds (read/agg/write)", no_wrap=True)
    table.add_column("lag", no_wrap=True)
    table.add_column("age s", no_wrap=True)
    for name, s in statuses.items():
        lag = s.get("lag")
        timings = (
            f"{s.get('read_s', 0):.2f}/{s.get('aggregate_s', 0):.2f}/{s.get('write_s', 0):.2f}"
        )
        table.add_row(
            name,
            str(s.get("state", "?")),
            str(s.get("batch_id", "-")),
            str(s.get("input_rows", 0)),
            str(s.get("dead_letters", 0)),
            str(s.get("written", 0)),
            f"{s.get('duration_s', 0):.2f} ({timings})",
            "?" if lag is None else str(lag),
            str(max(0, now_ms - int(s.get("updated_at_ms", now_ms))) // 1000),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    for s in statuses.values():
        if s.get("error"):
            console.print(f"[red]{job_summary(s)}[/red]")


def stream_start(
    project: ProjectOption = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Stop a running job first, then start it.")
    ] = False,
) -> None:
    """Start the online feature job in the background (idempotent; ``stream-stop`` ends it)."""
    from twotier.feature_jobs.detached import start_online

    settings = state.settings()
    project = project_of(settings, project)
    result = start_online(settings, project, restart=restart, progress=console.print)
    verb = "started" if result.started else "already running"
    console.print(
        f"[green]online job {project} {verb}[/green]: pid {result.process.pid}, "
        f"log {result.process.log}; the Dagster sensor {project}_streaming_watchdog restarts it"
    )


def stream_stop(project: ProjectOption = None) -> None:
    """Stop the background online feature job (started by ``stream-start`` or Dagster)."""
    from twotier.feature_jobs.detached import stop_online

    settings = state.settings()
    project = project_of(settings, project)
    stopped = stop_online(settings, project)
    if stopped is None:
        console.print(f"online job {project}: not running")
    else:
        console.print(f"[green]online job {project} stopped[/green] (pid {stopped.pid})")


def register(app: typer.Typer) -> None:
    """Add the feature-job commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("stream")(stream)
    app.command("jobs")(jobs)
    app.command("stream-start")(stream_start)
    app.command("stream-stop")(stream_stop)
