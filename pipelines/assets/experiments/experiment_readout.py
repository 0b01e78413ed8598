"""Asset: every experiment's per-group readout by serve day, its plot, and the checks on it."""

# No `from __future__ import annotations`: Dagster reads the annotations.
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from twotier.experiments import Experiment
from twotier.features.spec import ProjectFeatures
from twotier.models.plots import png_bytes
from twotier.offline_store.base import OfflineStore
from twotier.pipelines.assets.keys import (
    EXPERIMENT_READOUT,
    RECOMMENDATION_OUTCOMES,
    asset_key,
    group_name,
)
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import MLflowResource, OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL
from twotier.readout import (
    DAY_MS,
    METRIC_LABELS,
    PRIMARY,
    Readout,
    compare,
    current_generation,
    day_start_ms,
    first_served,
    group_intervals,
    per_user,
    readout,
    write_readout,
)
from twotier.readout_plot import readout_figure

HARM_CHECK = "no_significant_harm"
SAMPLE_CHECK = "sample_large_enough"


class ReadoutConfig(dg.Config):
    """Where the readout plots go."""

    plot_dir: str = ""
    """Folder of the PNG plots; default ``<data_dir>/readouts/<project>``."""


def readout_table(result: Readout, metric: str = PRIMARY) -> str:
    """The readout as a Markdown table: one row per group, differences against control."""
    label = METRIC_LABELS[metric]
    lines = [
        f"**{result.experiment}** (shuffle {result.shuffle}), {label}, "
        f"{1 - result.alpha:.0%} interval against **{result.control}**",
        "",
        "| group | users | recs | hits/rec | users with hit | smiles/hit | diff | interval | p |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for g in result.groups:
        d = g.differences.get(metric)
        diff = f"{d.difference:+.4f}" if d else "control"
        interval = f"[{d.low:+.4f}, {d.high:+.4f}]" if d else ""
        p = f"{d.p_value:.3g}" if d else ""
        lines.append(
            f"| {g.group} | {g.users:,} | {g.recommendations:,} | {g.values['hit_rate']:.4f} "
            f"| {g.values['user_hit_rate']:.3f} | {g.values['smile_rate']:.3f} "
            f"| {diff} | {interval} | {p} |"
        )
    return "\n".join(lines)


def _generation_start(store: OfflineStore, project: str, experiment: Experiment) -> tuple[int, int]:
    shuffle, started = current_generation(store, project, experiment)
    return shuffle, started or first_served(store, project, experiment.name)


def _log_run(
    tracking_uri: str,
    project: str,
    result: Readout,
    days: dict[str, Readout],
    since_ms: int,
    png: bytes,
    dagster_run_id: str,
) -> str:
    """Log the readout into the MLflow run of (experiment, shuffle); the run's page.

    One run per generation, found again by its tags: each day is a step (days since the
    generation started) of ``<group>/<metric>``, the plot its artifact.
    """
    import tempfile

    from mlflow.entities import Metric

    from twotier.registry import client

    c = client(tracking_uri)
    found = c.get_experiment_by_name(project)
    experiment_id = found.experiment_id if found else c.create_experiment(project)
    tags = {
        "twotier.project": project,
        "twotier.kind": "readout",
        "twotier.experiment": result.experiment,
        "twotier.shuffle": str(result.shuffle),
    }
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([experiment_id], filter_string=query, max_results=1)
    if runs:
        run_id = runs[0].info.run_id
    else:
        name = f"{project}.readout.{result.experiment} shuffle {result.shuffle}"
        run_id = c.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        c.log_param(run_id, "control", result.control)
        c.log_param(run_id, "alpha", result.alpha)
    c.set_tag(run_id, "dagster.run_id", dagster_run_id)
    metrics = []
    for key, day in days.items():
        step = max(0, (day_start_ms(key) - since_ms) // DAY_MS)
        stamp = day_start_ms(key)
        for g in day.groups:
            for metric, value in g.values.items():
                if value == value:  # not NaN
                    metrics.append(Metric(f"{g.group}/{metric}", float(value), stamp, int(step)))
            metrics.append(Metric(f"{g.group}/users", float(g.users), stamp, int(step)))
    for g in result.groups:
        for metric, d in g.differences.items():
            metrics.append(Metric(f"{g.group}/{metric}_diff", d.difference, 0, 0))
            metrics.append(Metric(f"{g.group}/{metric}_p", d.p_value, 0, 0))
    for start in range(0, len(metrics), 900):  # MLflow takes up to 1000 per batch
        c.log_batch(run_id, metrics=metrics[start : start + 900])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{PRIMARY}.png"
        path.write_bytes(png)
        c.log_artifact(run_id, str(path), "readout")
    c.set_terminated(run_id)
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def make_experiment_readout(
    project: str, features: ProjectFeatures, days: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``experiment_readout`` asset (``twotier.readout``), daily partitions, with checks.

    Each day's partition stores, per experiment, that day's readout and the cumulative one
    of the current generation through that day (``<project>__experiment_readout``, scopes
    ``day`` and ``cumulative``). The run's last day also draws the plot and logs the run.
    """
    key = asset_key(project, EXPERIMENT_READOUT)

    @dg.asset(
        key=key,
        deps=[asset_key(project, RECOMMENDATION_OUTCOMES)],
        partitions_def=days,
        backfill_policy=SINGLE_RUN,
        group_name=group_name(project, "experiments"),
        kinds={"clickhouse", "mlflow"},
        pool=OFFLINE_STORE_POOL,
        check_specs=[
            dg.AssetCheckSpec(
                HARM_CHECK,
                asset=key,
                description="No group is significantly worse than control on hits per "
                "recommendation (WARN).",
            ),
            dg.AssetCheckSpec(
                SAMPLE_CHECK,
                asset=key,
                description="Every group has readout.min_users users, so the readout can "
                "decide (WARN).",
            ),
        ],
        description=f"Per-group outcomes of {project!r}'s experiments against control: "
        "users, recommendations, hit rates and smile rate with intervals and p-values.",
    )
    def experiment_readout(
        context: dg.AssetExecutionContext,
        config: ReadoutConfig,
        offline_store: OfflineStoreResource,
        mlflow: MLflowResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        started = time.perf_counter()
        keys = sorted(context.partition_keys)
        last_end = day_start_ms(keys[-1]) + DAY_MS
        if config.plot_dir:
            plot_dir = Path(config.plot_dir)
        else:
            from twotier.config import load_settings

            plot_dir = load_settings().data_dir / "readouts" / project
        plot_dir.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {}
        harmed: list[str] = []
        small: list[str] = []
        summary: dict[str, Any] = {}
        with offline_store.open() as store:
            for experiment in features.experiments:
                shuffle, since = _generation_start(store, project, experiment)
                by_day: dict[str, Readout] = {}
                for day in keys:
                    lo = day_start_ms(day)
                    users = per_user(store, project, experiment, shuffle, lo, lo + DAY_MS)
                    by_day[day] = compare(experiment, users, shuffle, lo, lo + DAY_MS)
                    total = readout(store, project, experiment, until_ms=lo + DAY_MS)
                    write_readout(store, project, day, "day", by_day[day])
                    write_readout(store, project, day, "cumulative", total)
                result = total
                intervals = group_intervals(
                    store, project, experiment, shuffle, since or 0, last_end
                )
                name = experiment.name
                context.log.info(
                    f"{name} shuffle {shuffle}: "
                    + "; ".join(
                        f"{g.group} {g.users} users {g.values['hit_rate']:.4f} hits/rec"
                        for g in result.groups
                    )
                )
                figure = readout_figure(intervals, name, shuffle, PRIMARY, experiment.control)
                png = png_bytes(figure)
                plot = plot_dir / f"{name}-shuffle{shuffle}.png"
                plot.write_bytes(png)
                try:
                    url = _log_run(
                        mlflow.tracking_uri, project, result, by_day, since, png, context.run_id
                    )
                    metadata[f"{name}_mlflow_run"] = dg.MetadataValue.url(url)
                except Exception as exc:  # the table is stored; MLflow is where it is shown
                    context.log.warning(f"{name}: could not log the readout to MLflow: {exc}")
                metadata[f"{name}_readout"] = dg.MetadataValue.md(readout_table(result))
                encoded = base64.b64encode(png).decode("ascii")
                metadata[f"{name}_plot"] = dg.MetadataValue.md(
                    f"![{name} by day](data:image/png;base64,{encoded})"
                )
                metadata[f"{name}_plot_path"] = dg.MetadataValue.path(str(plot))
                harmed += [
                    f"{name}/{g}: {d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}], "
                    f"p={d.p_value:.3g}"
                    for g, d in result.harmed().items()
                ]
                small += [
                    f"{name}/{g.group}: {g.users} users (min_users {result.min_users})"
                    for g in result.groups
                    if g.users < result.min_users
                ]
                summary[name] = {
                    "shuffle": shuffle,
                    "groups": {g.group: {"users": g.users, **g.values} for g in result.groups},
                    "significant": sorted(result.significant()),
                }
        metadata["experiments"] = dg.MetadataValue.json(summary)
        metadata["days"] = len(keys)
        metadata["seconds"] = round(time.perf_counter() - started, 3)
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(
            check_name=HARM_CHECK,
            passed=not harmed,
            severity=dg.AssetCheckSeverity.WARN,
            description="significantly worse than control: " + "; ".join(harmed)
            if harmed
            else "no group is significantly worse than control",
        )
        yield dg.AssetCheckResult(
            check_name=SAMPLE_CHECK,
            passed=not small,
            severity=dg.AssetCheckSeverity.WARN,
            description="too few users to decide: " + "; ".join(small)
            if small
            else "every group has enough users to decide",
        )

    return experiment_readout
