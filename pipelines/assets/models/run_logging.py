"""Registration and run logging shared by the model assets."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from twotier.registry import client

log = logging.getLogger(__name__)


def log_figures(tracking_uri: str, run_id: str, figures: Mapping[str, Figure]) -> list[str]:
    """Log each figure as the PNG artifact ``plots/<name>.png`` of the run."""
    c = client(tracking_uri)
    paths = []
    for name, figure in figures.items():
        path = f"plots/{name}.png"
        c.log_figure(run_id, figure, path)
        paths.append(path)
    return paths


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log metrics into an existing (finished) run."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    client(tracking_uri).log_batch(run_id, metrics=batch)


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as MLflow takes them (None becomes the string ``None``)."""
    return {k: ("None" if v is None else v) for k, v in params.items()}


class Stopwatch:
    """Seconds spent in each named step, lap after lap (for metadata and the benchmark)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """Record the time since the previous lap as ``step``."""
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now


def run_identity(context: Any, project: str, tier: str, model: str) -> tuple[str, dict[str, str]]:
    """The MLflow run name and tags of a model asset's run: which project, tier and model,
    and a link back to the Dagster run that trained it."""
    import os

    host = os.environ.get("TWOTIER_DAGSTER__HOST", "127.0.0.1")
    port = os.environ.get("TWOTIER_DAGSTER__PORT", "3000")
    run_id = str(context.run_id)
    tags = {
        "twotier.project": project,
        "twotier.tier": tier,
        "twotier.model": model,
        "dagster.run_id": run_id,
        "dagster.run_url": f"http://{host}:{port}/runs/{run_id}",
    }
    alias = promoted_alias(context.run.run_config, project)
    tags["twotier.alias"] = alias
    # The Dagster run says whether it trains a champion or a challenger (run list filter).
    try:
        context.instance.add_run_tags(run_id, {"twotier/alias": alias})
    except Exception as exc:  # tagging is a courtesy; a read-only instance must not fail a run
        log.warning("could not tag run %s: %s", run_id, exc)
    return f"{project}.{tier}.{model} {alias} {run_id[:8]}", tags


def promoted_alias(run_config: Mapping[str, Any] | None, project: str) -> str:
    """The alias this run's promotion moves: its configured ``alias``, else ``champion``.

    Example:
        >>> promoted_alias({"ops": {"p__promotion": {"config": {"alias": "challenger"}}}}, "p")
        'challenger'
        >>> promoted_alias({}, "p")
        'champion'
    """
    ops = (run_config or {}).get("ops") or {}
    config = (ops.get(f"{project}__promotion") or {}).get("config") or {}
    return str(config.get("alias", "champion"))


def model_card(
    title: str,
    window: tuple[int, int],
    rows: int,
    metrics: Mapping[str, float],
    lines: list[tuple[str, str]],
) -> str:
    """A registered version's description: what it is, trained on what, measured how."""
    import datetime as dt

    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")

    out = [
        f"**{title}**",
        "",
        f"- training data: {rows:,} rows, events {day(window[0])} to {day(window[1])} "
        "(the later events are the hold-out)",
    ]
    for label, key in lines:
        if key in metrics:
            value = float(metrics[key])
            shown = f"{value:,.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"
            out.append(f"- {label}: {shown}")
    return "\n".join(out)


def mlflow_run_url(tracking_uri: str, run_id: str) -> str:
    """The MLflow UI page of a run, under its experiment."""
    base = tracking_uri.rstrip("/")
    try:
        experiment = client(tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # the page link is a courtesy: never fail a run for it
        return f"{base}/#/runs/{run_id}"
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def mlflow_model_url(tracking_uri: str, name: str, version: str) -> str:
    """The MLflow UI page of a registered model version."""
    return f"{tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
