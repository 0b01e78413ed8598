"""``twotier materialize``: run the project's assets on the local Dagster instance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from twotier.cli import ProjectOption, console, fail, project_of, state

IN_PROCESS: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}
"""Run config: every step in the run's own process (one import instead of one per step)."""


def run_config(
    config_json: str | None, in_process: bool, log_level: str = "INFO"
) -> dict[str, Any]:
    """The run config: ``config_json`` (a JSON object) plus in-process execution if asked,
    and Dagster's console logger at ``log_level`` (its DEBUG events are most of a run's
    output) unless the JSON sets ``loggers``.

    Raises:
        ValueError: ``config_json`` is not a JSON object.
    """
    config: dict[str, Any] = {}
    if config_json:
        try:
            config = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config-json is not valid JSON ({exc}): {config_json!r}") from None
        if not isinstance(config, dict):
            raise ValueError(f"--config-json must be a JSON object, got {config_json!r}")
    if in_process and "execution" not in config:
        config = {**config, **IN_PROCESS}
    if "loggers" not in config:
        config = {**config, "loggers": {"console": {"config": {"log_level": log_level}}}}
    return config


DAGSTER_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d (?P<time>\d\d:\d\d:\d\d) [+-]\d{4} - dagster - (?P<level>[A-Z]+)"
    r" - [^ ]+ - [0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12} - (?:(?P<step>[\w.]+) - )?"
    r"(?P<message>.*)$"
)
"""Dagster's console line: date, time, zone, logger, level, job, run id, step, message."""


def compact_log_line(line: str, width: int = 80) -> str:
    """One of Dagster's console lines as ``HH:MM:SS step: message``, wrapped to ``width``
    with a hanging indent; any other line as it is.

    Dagster's own line repeats the date, zone, logger, job name and the whole run id on
    every event (the step table after the run names the run), so at 80 columns the
    message started on the second line.
    """
    match = DAGSTER_LINE.match(line.rstrip("\n"))
    if match is None:
        return line.rstrip("\n")
    level = "" if match["level"] == "INFO" else f"{match['level']} "
    step = f"{match['step']}: " if match["step"] else ""
    text = f"{match['time']} {level}{step}{match['message']}"
    return textwrap.fill(
        text, width=max(width, 40), subsequent_indent=" " * 9, break_on_hyphens=False
    )


def selected_assets(selection: str) -> dict[str, bool]:
    """The asset keys (``project/name``) that a Dagster selection string matches, each
    with whether it is partitioned.

    Resolved against the code location's definitions before anything runs, so a
    selection that matches nothing is refused instead of materialising everything.

    Raises:
        ValueError: Dagster cannot parse the selection.
    """
    import warnings

    import dagster as dg

    with warnings.catch_warnings():  # Dagster's beta notices, not the user's concern
        warnings.simplefilter("ignore")
        from twotier.pipelines.definitions import defs

        graph = defs.resolve_asset_graph()
        try:
            keys = dg.AssetSelection.from_string(selection).resolve(graph)
        except Exception as exc:  # Dagster raises several kinds for a bad string
            raise ValueError(f"cannot read the asset selection {selection!r}: {exc}") from None
    return {
        k.to_user_string(): graph.get(k).partitions_def is not None
        for k in sorted(keys, key=lambda k: k.to_user_string())
    }


def materialize(
    project: ProjectOption = None,
    select: Annotated[
        str | None,
        typer.Option(
            help="Dagster asset selection (default: the project's assets but the "
            "daily experiment readouts, which the readout job runs)."
        ),
    ] = None,
    partition_range: Annotated[
        str | None,
        typer.Option(
            help="Partitions FIRST...LAST: training months, e.g. 1996-01-01...2018-09-01, "
            "or serve days for the readout assets (default: all, up to now)."
        ),
    ] = None,
    config_json: Annotated[
        str | None,
        typer.Option(
            help='Run config as JSON, e.g. \'{"ops": {"movielens__tier2_ranker": '
            '{"config": {"auc_floor": 0.6}}}}\'.'
        ),
    ] = None,
    in_process: Annotated[
        bool, typer.Option(help="Run every step in the run's process (faster locally).")
    ] = True,
    log_level: Annotated[
        str,
        typer.Option(help="Dagster's console log level: DEBUG shows every engine event."),
    ] = "INFO",
) -> None:
    """Materialise assets through Dagster, recorded in the instance the Dagster UI shows.

    One run covers the whole partition range (every asset has a single-run backfill
    policy); blocking asset checks that fail stop the promotion and fail the run.
    """
    from twotier.pipelines.jobs.readout import experiments_group
    from twotier.pipelines.materialize import default_range

    settings = state.settings()
    project = project_of(settings, project)
    selection = select or (f'key:"{project}/*" and not group:"{experiments_group(project)}"')
    try:
        matched = selected_assets(selection)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    if not matched:
        raise fail(
            f"the selection {selection!r} matches no asset; the projects' assets are "
            f"keyed <project>/<asset> (declared: {', '.join(sorted(settings.projects))}), "
            f"e.g. --select 'key:{project}/feature_snapshots'",
            code=2,
        )
    partitioned = [key.rsplit("/", 1)[-1] for key, parted in matched.items() if parted]
    if not partitioned and partition_range is not None:
        raise fail(
            f"{', '.join(matched)} {'is' if len(matched) == 1 else 'are'} not partitioned: "
            "leave out --partition-range",
            code=2,
        )
    if partition_range is None and partitioned:
        try:
            first, last = default_range(
                partitioned, settings.pipelines.partitions_start, settings.pipelines.readout_start
            )
        except ValueError as exc:
            raise fail(str(exc), code=2) from None
        partition_range = f"{first}...{last}"
    try:
        config = run_config(config_json, in_process, log_level.upper())
    except ValueError as exc:
        raise fail(str(exc)) from None
    env = {**os.environ, **settings.to_env(), "DAGSTER_HOME": str(settings.dagster_home)}
    # Dagster's own notices about itself: its selection parser's `include_sources` and
    # the sensors' `owners` are in beta, and `dagster asset materialize` is superseded.
    quiet = [
        "ignore:Parameter `include_sources`",
        "ignore:Parameter `owners`",
        "ignore:Function `asset_materialize_command` is superseded",
    ]
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), *quiet]))
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
        *(["--partition-range", partition_range] if partition_range else []),
    ]
    if config:
        command += ["--config-json", json.dumps(config)]
    over = f" over partitions {partition_range}" if partition_range else ""
    count = f"{len(matched)} asset{'' if len(matched) == 1 else 's'}"
    console.print(
        f"materialising [bold]{escape(selection)}[/bold] ({count}){over} "
        f"(DAGSTER_HOME={settings.dagster_home})",
        soft_wrap=False,
    )
    console.print("[dim]Dagster loads the code location first (up to a minute), then logs "
                  "each step here[/dim]")  # fmt: skip
    started = time.time()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        print(compact_log_line(line, console.width), file=sys.stderr, flush=True)
    rc = process.wait()
    _print_steps(settings.dagster_home, started)
    if rc != 0:
        raise fail(
            f"dagster: materialisation of {selection} failed (exit {rc}); see the run above "
            f"and the Dagster UI at http://{settings.dagster.host}:{settings.dagster.port} "
            "(a failed blocking check stops the promotion and fails the run)"
        )
    console.print(f"[green]materialised[/green] {selection}")


def _print_steps(home: Any, since: float) -> None:
    """A table of the run just made: each step, its outcome and seconds (best effort)."""
    import warnings

    from rich.table import Table

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import dagster as dg

            with dg.DagsterInstance.from_config(str(home)) as instance:
                records = instance.get_run_records(limit=1)
                if not records or (records[0].start_time or 0) < since - 5:
                    return
                run = records[0].dagster_run
                stats = instance.get_run_step_stats(run.run_id)
    except Exception:  # the summary is a courtesy; the run's own log said it all
        return
    table = Table(title=f"run {run.run_id[:8]}: {run.status.value.lower()}")
    for column, justify in (("step", "left"), ("outcome", "left"), ("seconds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for step in sorted(stats, key=lambda s: s.start_time or 0):
        seconds = (step.end_time or 0) - (step.start_time or 0)
        outcome = step.status.value.lower() if step.status else "?"
        table.add_row(step.step_key, outcome, f"{seconds:.1f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``twotier`` app (entry point ``twotier.cli``)."""
    app.command("materialize")(materialize)
