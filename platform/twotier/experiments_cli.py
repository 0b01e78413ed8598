"""``twotier experiments``: the per-group readout of each A/B experiment, and its shuffle.

``twotier experiments`` prints each experiment's readout (users, recommendations, hit
rates, the difference against control with a 95% interval and a p-value);
``twotier experiments shuffle`` starts a new assignment generation.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from twotier.cli import ProjectOption, fail, project_of, state

if TYPE_CHECKING:
    from twotier.readout import Conclusion, Readout

experiments_app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
)

ExperimentOption = Annotated[
    str | None,
    typer.Option("--experiment", "-e", help="One experiment (default: every one)."),
]
MetricOption = Annotated[
    str,
    typer.Option(
        "--metric",
        "-m",
        help="hit_rate (hits per recommendation), user_hit_rate or smile_rate.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _number(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{low:+.3f}, {high:+.3f}]"


def readout_rows(result: Readout, metric: str) -> list[dict[str, Any]]:
    """One row per group of ``metric``: the values the table and ``--json`` print."""
    return [row for row in result.rows() if row["metric"] == metric]


def _print_readout(result: Readout, verdict: Conclusion, metric: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from twotier.readout import METRIC_LABELS, day_key

    since = day_key(result.since_ms) if result.since_ms else "-"
    table = Table(
        title=f"{escape(result.experiment)} (shuffle {result.shuffle}): {METRIC_LABELS[metric]}",
        caption=f"since {since}; diff, {1 - result.alpha:.0%} interval and p against "
        f"{escape(result.control)}",
        title_justify="left",
        caption_justify="left",
    )
    for column, justify in (
        ("group", "left"),
        ("users", "right"),
        ("recs", "right"),
        ("value", "right"),
        ("diff", "right"),
        (f"{1 - result.alpha:.0%} interval", "left"),
        ("p", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in readout_rows(result, metric):
        control = bool(row["is_control"])
        table.add_row(
            escape(str(row["group"])),
            f"{row['users']:,}",
            f"{row['recommendations']:,}",
            _number(row["value"]),
            "control" if control else f"{row['difference']:+.4f}",
            "" if control else _interval(row["low"], row["high"]),
            "" if control else f"{row['p_value']:.2g}",
        )
    out = Console(highlight=False, soft_wrap=False)
    out.print(table)
    state_word = "concluded" if verdict.concluded else "running"
    out.print(f"{state_word}: {escape(verdict.reason)}")


@experiments_app.callback()
def experiments_command(
    ctx: typer.Context,
    project: ProjectOption = None,
    experiment: ExperimentOption = None,
    metric: MetricOption = "hit_rate",
    as_json: JsonOption = False,
) -> None:
    """A/B experiments: each one's readout now, and the shuffle that starts new cohorts.

    Per group: users, recommendations, the metric, and its difference against control
    with an interval and a p-value, from the outcomes the readout job attributed (the
    recommendation_outcomes asset; it runs hourly, or materialise it yourself).
    """
    if ctx.invoked_subcommand is not None:
        return
    from twotier.offline_store import open_offline_store
    from twotier.readout import METRICS, ReadoutError, decide, experiment_of, readout

    settings = state.settings()
    project = project_of(settings, project)
    if metric not in METRICS:
        raise fail(f"unknown metric {metric!r}; one of {', '.join(METRICS)}", code=2)
    features = settings.project_features(project)
    try:
        chosen = [experiment_of(features, project, experiment)]
    except ReadoutError as exc:
        raise fail(str(exc), code=2) from None
    if experiment is None:
        chosen = list(features.experiments)
    now = time.time_ns() // 1_000_000
    found: list[tuple[Readout, Conclusion]] = []
    try:
        with open_offline_store(settings) as store:
            for e in chosen:
                result = readout(store, project, e, until_ms=now + 1)
                found.append((result, decide(e, result, now)))
    except Exception as exc:  # the store's own errors, or a lock held too long
        raise fail(f"cannot read the offline store: {exc}") from None
    if as_json:
        payload = [
            {
                "project": project,
                "experiment": r.experiment,
                "shuffle": r.shuffle,
                "control": r.control,
                "since_ms": r.since_ms,
                "until_ms": r.until_ms,
                "alpha": r.alpha,
                "concluded": v.concluded,
                "reason": v.reason,
                "rows": [_no_nan(row) for row in r.rows()],
            }
            for r, v in found
        ]
        typer.echo(json.dumps(payload, indent=1))
        return
    for result, verdict in found:
        if not any(g.recommendations for g in result.groups):
            typer.echo(
                f"{result.experiment}: no attributed recommendations yet. Serve some, then "
                f"twotier materialize --select 'key:{project}/recommendation_outcomes'"
            )
            continue
        _print_readout(result, verdict, metric)


def _no_nan(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with NaN (no interval for control) as ``null``: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@experiments_app.command("shuffle")
def shuffle_command(
    experiment: Annotated[
        str, typer.Argument(metavar="EXPERIMENT", help="The experiment to reshuffle.")
    ],
    project: ProjectOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Shuffle even if the readout has not concluded.")
    ] = False,
) -> None:
    """Start a new assignment generation of a concluded experiment (new cohorts).

    Past training rows keep the generation that held at their time; serving assigns new
    requests with the new one within serving.experiment_generation_ttl_s.
    """
    from twotier.readout import ReadoutError
    from twotier.shuffles import ShuffleRefused, shuffle_experiment

    settings = state.settings()
    project = project_of(settings, project)
    try:
        done = shuffle_experiment(settings, project, experiment, force=force)
    except ReadoutError as exc:
        raise fail(str(exc), code=2) from None
    except ShuffleRefused as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # the stores' own errors, or a lock held too long
        raise fail(
            f"cannot shuffle {experiment!r}: {exc}; run it again when the stores answer "
            "(a shuffle already recorded offline is finished, not repeated)"
        ) from None
    typer.echo(
        f"{done.summary}; serving switches within "
        f"{settings.serving.experiment_generation_ttl_s:g} s"
    )


def register(app: typer.Typer) -> None:
    """Add ``experiments`` (and its subcommands) to the ``twotier`` app."""
    app.add_typer(experiments_app, name="experiments")
