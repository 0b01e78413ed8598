"""The ``twotier`` command line.

The core registers the commands that need only the core (``config``, ``replay``,
``generate``); the other folders add theirs through the ``twotier.cli`` entry-point group
(``infra`` adds ``up``/``down``/``status``, ``feature_jobs`` adds ``stream`` …),
so the core never imports them.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from twotier.config import ConfigError, Settings, load_settings
from twotier.errors import TwotierError

console = Console(stderr=True, highlight=False, soft_wrap=True)
app = typer.Typer(
    name="twotier",
    # Help texts are Markdown: `code` shows as code, never as literal backticks.
    rich_markup_mode="markdown",
    help="twotier: a platform for two-tier recommender systems. Start with `twotier up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flag_type_hidden() -> None:
    """A flag's help row shows no ``<bool>`` type: a flag takes no value."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flag_type_hidden()

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


def bullet_text(line: str, width: int = 80) -> str:
    """``line`` wrapped to follow a ``  • `` bullet within ``width`` columns (hanging
    indent; paths and other long words are not broken)."""
    wrapped = textwrap.fill(
        line,
        width=max(width, 40),
        initial_indent="    ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return wrapped[4:]


@contextmanager
def progress_lines(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with ``title`` while work runs; each progress line is printed above it."""
    with console.status(title, spinner="dots") as status:

        def show(line: str) -> None:
            console.print(f"  [dim]•[/dim] {escape(bullet_text(line, console.width))}")
            status.update(f"{title} — {escape(line)}")

        yield show


def project_of(settings: Settings, project: str | None) -> str:
    """``project`` (or the configured default) when it is declared, else a clear exit.

    Raises:
        typer.Exit: Code 2 after one line naming the declared projects.
    """
    name = project or settings.project
    if name not in settings.projects:
        raise fail(
            f"no project {name!r}; declared: {', '.join(sorted(settings.projects))} "
            "(under `projects:` in twotier.yaml)",
            code=2,
        )
    return name


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear error line and return the exit to raise.

    The message is printed as it is: brackets in it are never read as Rich markup.
    """
    console.print(f"[bold red]error:[/bold red] {escape(message)}")
    return typer.Exit(code)


@app.command("config")
def config_command(
    check: Annotated[bool, typer.Option(help="Only validate; print nothing on success.")] = False,
) -> None:
    """Validate the configuration and print the effective values as YAML."""
    import yaml

    settings = state.settings()
    if not check:
        # What the values resolve to, as comments: the YAML below stays loadable.
        resolved = {
            "data folder": str(settings.data_dir),
            "cache folder": str(settings.cache),
            "online store": settings.online_store_uri,
            "offline store": settings.offline_store_dsn,
            "MLflow": settings.mlflow.uri,
            "Dagster": f"http://{settings.dagster.host}:{settings.dagster.port}",
            "serving": settings.serving.url(settings.ray),
        }
        width = max(len(k) for k in resolved)
        typer.echo("# resolved:")
        for key, value in resolved.items():
            typer.echo(f"#   {key:<{width}}  {value}")
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
    items: Annotated[
        bool,
        typer.Option(help="Also load movies.csv (title, genres) as item data (online store)."),
    ] = True,
    skip: Annotated[
        int, typer.Option(min=0, help="Leave out the first N ratings (an earlier --limit N).")
    ] = 0,
    retime_now: Annotated[
        bool,
        typer.Option(
            help="Re-time the ratings to now, 1 ms apart in order: users' real later "
            "choices, after what serving recommended them now (for the readout)."
        ),
    ] = False,
) -> None:
    """Replay MovieLens ratings into the project's Kafka topic as events, with item data."""
    from twotier.items import load_items, movielens_items
    from twotier.replay import replay_movielens

    settings = state.settings()
    # Any valid name: events may be replayed before the project is declared (as generate).
    project = project or settings.project
    with progress_lines(f"replaying {dataset} into project {project}") as show:
        loaded = 0
        if items:
            show(f"loading item data from {dataset / 'movies.csv'}")
            loaded = load_items(settings, project, movielens_items(dataset))
            show(f"{loaded} items loaded")
        n = replay_movielens(
            settings,
            project,
            dataset,
            limit=limit,
            speedup=speedup,
            progress=show,
            skip=skip,
            retime_from_ms=time.time_ns() // 1_000_000 if retime_now else None,
        )
    console.print(f"[green]replayed[/green] {n} events and {loaded} items into project {project}")


@app.command("generate")
def generate_command(
    project: Annotated[
        str, typer.Option("--project", "-p", help="Project receiving the events.")
    ] = "memes",
    events_per_second: Annotated[
        float, typer.Option("--events-per-second", "-r", min=0.001, help="Target rate.")
    ] = 1000.0,
    limit: Annotated[
        int | None, typer.Option(min=0, help="Stop after N events (default: no limit).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.001, help="Stop after this many seconds.")
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option(min=1, help="Number of items (memes).")] = 5000,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same events (and ids).")] = 0,
    item_data: Annotated[
        bool, typer.Option(help="Load the items' content types as item data first.")
    ] = True,
) -> None:
    """Produce a synthetic meme feed (views, smiles, dislikes, comments, shares) for load tests.

    Without --limit or --duration it runs until Ctrl-C.
    """
    from twotier.generate import MemeFeedConfig, generate_memes

    settings = state.settings()
    config = MemeFeedConfig(users=users, items=items, seed=seed)
    with progress_lines(f"generating meme events into project {project}") as show:
        report = generate_memes(
            settings,
            project,
            config,
            events_per_second=events_per_second,
            limit=limit,
            duration_s=duration,
            load_item_data=item_data,
            progress=show,
        )
    actions = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items()))
    console.print(
        f"[green]generated[/green] {report.events} events into {report.topic} in "
        f"{report.seconds:.1f} s: {report.events_per_second:.0f} events/s achieved "
        f"(target {events_per_second:g}); {actions}"
    )


def _load_plugins() -> None:
    from twotier import experiments_cli, inspect_cli

    inspect_cli.register(app)  # projects, features, models, online
    experiments_cli.register(app)  # experiments, experiments shuffle
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
    console.print(f"[bold red]error:[/bold red] {escape(message)}")
    return 2


if __name__ == "__main__":
    main()
