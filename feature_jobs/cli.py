"""``twotier stream``: the project's Spark online feature job on the local stack."""

from __future__ import annotations

from typing import Annotated

import typer

from twotier.cli import ProjectOption, console, progress_lines, state


def stream(
    project: ProjectOption = None,
    available_now: Annotated[
        bool,
        typer.Option("--available-now", help="Process what is in Kafka now, then stop."),
    ] = False,
) -> None:
    """Run the Spark Structured Streaming job that keeps the online store fresh."""
    from twotier.feature_jobs.online_job import run_online

    settings = state.settings()
    project = project or settings.project
    mode = "available data" if available_now else "continuous stream (Ctrl-C stops)"
    with progress_lines(f"online feature job for {project}: {mode}") as show:
        run_online(settings, project, available_now=available_now, progress=show)
    console.print(f"[green]online feature job finished[/green] for {project}")


def register(app: typer.Typer) -> None:
    """Add the feature-job commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("stream")(stream)
