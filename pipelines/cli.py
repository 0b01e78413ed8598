"""``twotier materialize``: run the project's assets on the local Dagster instance."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from twotier.cli import ProjectOption, console, fail, state


def materialize(
    project: ProjectOption = None,
    select: Annotated[
        str | None,
        typer.Option(help="Dagster asset selection (default: all assets of the project)."),
    ] = None,
) -> None:
    """Materialise assets through Dagster, recorded in the instance the Dagster UI shows."""
    settings = state.settings()
    project = project or settings.project
    selection = select or f"key:{project}/*"
    env = {**os.environ, **settings.to_env(), "DAGSTER_HOME": str(settings.dagster_home)}
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "twotier.pipelines.definitions",
        "--select",
        selection,
    ]
    console.print(f"materialising [bold]{selection}[/bold] (DAGSTER_HOME={settings.dagster_home})")
    rc = subprocess.run(command, env=env, check=False).returncode
    if rc != 0:
        raise fail(
            f"dagster: materialisation of {selection} failed (exit {rc}); see the run above "
            f"and the Dagster UI at http://{settings.dagster.host}:{settings.dagster.port}"
        )
    console.print(f"[green]materialised[/green] {selection}")


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("materialize")(materialize)
