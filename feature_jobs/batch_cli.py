"""``twotier batch offline|import|validate``, also as ``python -m twotier.feature_jobs <mode>``.

Each mode prints a JSON summary on stdout (progress goes to stderr), so schedulers and
``spark-submit`` drivers can read the result; ``validate`` exits with 1 when a check of
severity ``ERROR`` failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Annotated, Any

import typer

from twotier.config import Settings

BATCH_MODES = ("offline", "import", "validate")


def parse_offsets(spec: str | None) -> dict[int, int] | None:
    """``"0:100,1:250"`` → ``{0: 100, 1: 250}`` (partition: offset); None stays None.

    Raises:
        ValueError: An entry is not ``<partition>:<offset>`` with integers >= 0.
    """
    if spec is None or not spec.strip():
        return None
    offsets: dict[int, int] = {}
    for part in spec.split(","):
        try:
            partition, offset = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(
                f"offsets {spec!r}: {part!r} is not <partition>:<offset>, e.g. 0:100,1:250"
            ) from None
        if partition < 0 or offset < 0:
            raise ValueError(f"offsets {spec!r}: {part!r} has a negative number")
        offsets[partition] = offset
    return offsets


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_offline_mode(
    settings: Settings, project: str, start: str | None = None, end: str | None = None
) -> int:
    """``offline``: load a Kafka range; prints the run's summary; returns the exit code."""
    from twotier.feature_jobs.offline_job import run_offline

    stats = run_offline(
        settings, project, parse_offsets(start), parse_offsets(end), progress=_stderr
    )
    _print_json(stats.to_dict())
    return 0


def run_import_mode(settings: Settings, project: str, groups: list[str] | None = None) -> int:
    """``import``: bootstrap online groups from the offline store; prints the summary."""
    from twotier.feature_jobs.import_job import run_import

    result = run_import(settings, project, groups or None, progress=_stderr)
    _print_json(result.to_dict())
    return 0


def run_validate_mode(
    settings: Settings,
    project: str,
    recent_minutes: float = 60.0,
    tolerance: float = 0.01,
    checks: list[str] | None = None,
) -> int:
    """``validate``: run the checks; prints them; 1 if an ``ERROR`` check failed."""
    from twotier.feature_jobs.validate import run_validation

    results = run_validation(
        settings,
        project,
        recent_minutes=recent_minutes,
        tolerance=tolerance,
        checks=checks or ("topic", "online", "events"),
    )
    _print_json([r.model_dump() for r in results])
    return 1 if any(not r.passed and r.severity == "ERROR" for r in results) else 0


# -- python -m twotier.feature_jobs ------------------------------------------------


def add_batch_parsers(modes: Any) -> None:
    """Add the ``offline``, ``import`` and ``validate`` sub-parsers to an argparse group."""
    offline = modes.add_parser("offline", help="Kafka offset range → offline store + snapshots")
    offline.add_argument("--project", help="project name (default: settings.project)")
    offline.add_argument("--start", help="first offsets, e.g. 0:100,1:250 (default: earliest)")
    offline.add_argument("--end", help="end offsets, exclusive (default: latest at start)")
    imp = modes.add_parser("import", help="offline history → online store, with handoff offsets")
    imp.add_argument("--project", help="project name (default: settings.project)")
    imp.add_argument("--group", action="append", help="feature group name (repeatable)")
    val = modes.add_parser("validate", help="data checks; JSON results; exit 1 on an ERROR")
    val.add_argument("--project", help="project name (default: settings.project)")
    val.add_argument("--recent-minutes", type=float, default=60.0)
    val.add_argument("--tolerance", type=float, default=0.01)
    val.add_argument("--check", action="append", choices=["topic", "online", "events"])


def run_batch_args(args: argparse.Namespace, settings: Settings) -> int:
    """Run the batch mode ``args.mode`` parsed by ``add_batch_parsers``; the exit code."""
    from twotier.errors import TwotierError

    project = args.project or settings.project
    try:
        if args.mode == "offline":
            return run_offline_mode(settings, project, args.start, args.end)
        if args.mode == "import":
            return run_import_mode(settings, project, args.group)
        return run_validate_mode(settings, project, args.recent_minutes, args.tolerance, args.check)
    except (TwotierError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# -- twotier batch ---------------------------------------------------------------------

batch_app = typer.Typer(
    name="batch",
    help="Batch feature jobs: offline load, online import, data validation.",
    no_args_is_help=True,
)


def _settings() -> Settings:
    from twotier.cli import state

    return state.settings()


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="Project name (default: `project` in config).")
]


@batch_app.command("offline")
def offline_command(
    project: ProjectOption = None,
    start: Annotated[
        str | None, typer.Option(help="First offsets, e.g. 0:100,1:250 (default: earliest).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="End offsets, exclusive (default: latest at start).")
    ] = None,
) -> None:
    """Load a Kafka offset range into the offline store and rebuild feature snapshots."""
    settings = _settings()
    _exit(run_offline_mode(settings, project or settings.project, start, end))


@batch_app.command("import")
def import_command(
    project: ProjectOption = None,
    group: Annotated[
        list[str] | None, typer.Option(help="Feature group to import (repeatable; default all).")
    ] = None,
) -> None:
    """Bootstrap online feature groups from the offline history; the online job continues."""
    settings = _settings()
    _exit(run_import_mode(settings, project or settings.project, group))


@batch_app.command("validate")
def validate_command(
    project: ProjectOption = None,
    recent_minutes: Annotated[
        float, typer.Option(help="The topic must have records this recent.")
    ] = 60.0,
    tolerance: Annotated[
        float, typer.Option(help="Relative online/offline counter difference allowed.")
    ] = 0.01,
    check: Annotated[
        list[str] | None, typer.Option(help="Check family: topic, online, events (repeatable).")
    ] = None,
) -> None:
    """Run the data checks; print JSON results; exit 1 if an ERROR check failed."""
    settings = _settings()
    _exit(
        run_validate_mode(settings, project or settings.project, recent_minutes, tolerance, check)
    )


def register(app: typer.Typer) -> None:
    """Add ``twotier batch`` to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.add_typer(batch_app, name="batch")
