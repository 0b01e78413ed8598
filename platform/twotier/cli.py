"""The ``twotier`` command line.

The core registers the commands that need only the core (``config``, ``replay``);
the other folders add theirs through the ``twotier.cli`` entry-point group
(``infra`` adds ``up``/``down``/``status``, ``feature_jobs`` adds ``stream`` …),
so the core never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from twotier.config import ConfigError, Settings, load_settings
from twotier.errors import TwotierError

console = Console(stderr=True, highlight=False, soft_wrap=True)
app = typer.Typer(
    name="twotier",
    help="twotier: a platform for two-tier recommender systems. Start with `twotier up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config (default: $TWOTIER_CONFIG or ./twotier.yaml)."
    ),
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="Project name (default: `project` in config).")
]


class CliState:
    """What the root callback parsed, shared with every command."""

    config_path: Path | None = None

    def settings(self) -> Settings:
        return load_settings(self.config_path)


state = CliState()


@app.callback()
def _root(config: ConfigOption = None) -> None:
    state.config_path = config


@contextmanager
def progress_lines(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with ``title`` while work runs; each progress line is printed above it."""
    with console.status(title, spinner="dots") as status:

        def show(line: str) -> None:
            console.print(f"  [dim]•[/dim] {line}")
            status.update(f"{title} — {line}")

        yield show


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear error line and return the exit to raise."""
    console.print(f"[bold red]error:[/bold red] {message}")
    return typer.Exit(code)


@app.command("config")
def config_command(
    check: Annotated[bool, typer.Option(help="Only validate; print nothing on success.")] = False,
) -> None:
    """Validate the configuration and print the effective values as YAML."""
    import yaml

    settings = state.settings()
    if not check:
        typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


@app.command("replay")
def replay_command(
    project: ProjectOption = None,
    dataset: Annotated[Path, typer.Option(help="MovieLens folder holding ratings.csv.")] = Path(
        "../shared/datasets/movielens-small"
    ),
    limit: Annotated[int | None, typer.Option(help="Replay only the first N ratings.")] = None,
    speedup: Annotated[
        float | None, typer.Option(help="Follow event time divided by this; default: max speed.")
    ] = None,
) -> None:
    """Replay MovieLens ratings into the project's Kafka topic as events."""
    from twotier.replay import replay_movielens

    settings = state.settings()
    project = project or settings.project
    with progress_lines(f"replaying {dataset} into project {project}") as show:
        n = replay_movielens(
            settings, project, dataset, limit=limit, speedup=speedup, progress=show
        )
    console.print(f"[green]replayed[/green] {n} events into project {project}")


def _load_plugins() -> None:
    for ep in entry_points(group="twotier.cli"):
        ep.load()(app)


def main() -> None:
    """Entry point of the ``twotier`` script: runs the app, turns known errors into one line."""
    _load_plugins()
    try:
        app()
    except (ConfigError, TwotierError) as exc:
        raise SystemExit(_print_error(str(exc))) from None


def _print_error(message: str) -> int:
    console.print(f"[bold red]error:[/bold red] {message}")
    return 2


if __name__ == "__main__":
    main()
