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
