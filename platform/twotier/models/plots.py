"""Plots of a training run (feature importance, metric curves) as matplotlib figures.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no display, no global
state), so they are safe in worker threads; ``png_bytes`` renders one, and
``MlflowClient.log_figure`` logs one as a PNG artifact.

Example:
    >>> fig = metric_curves_figure("Recall@k", [1, 10], {"model": [0.1, 0.3]})
    >>> png_bytes(fig)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from twotier.models.metrics import MetricsError, auc, ranking_metrics


def png_bytes(figure: Figure) -> bytes:
    """The figure rendered as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def feature_importance_figure(
    columns: Sequence[str], importances: Sequence[float] | np.ndarray, top: int = 30
) -> Figure:
    """Horizontal bars of the ``top`` most important features, largest on top.

    Raises:
        ValueError: ``columns`` and ``importances`` differ in length.
    """
    values = np.asarray(importances, dtype=np.float64)
    if len(columns) != len(values):
        raise ValueError(
            f"{len(columns)} feature names but {len(values)} importances: pass one per column"
        )
    order = np.argsort(values)[::-1][:top][::-1]
    labels = [columns[i] for i in order]
    # Wide enough for the longest column name beside the bars; the layout keeps it inside.
    longest = max((len(label) for label in labels), default=10)
    figure = Figure(
        figsize=(5 + 0.09 * longest, max(2.5, 0.28 * len(order) + 1)), layout="constrained"
    )
    ax = figure.add_subplot()
    ax.barh(labels, values[order], color="#4c72b0")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("importance (gain share)")
    ax.set_title(f"Tier two: feature importance (top {len(order)} of {len(values)})")
    return figure


def metric_curves_figure(
    metric: str, xs: Sequence[float], curves: Mapping[str, Sequence[float]], xlabel: str = "k"
) -> Figure:
    """One line per named curve over ``xs`` (e.g. Recall@k of a model and of popularity)."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    for name, ys in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def recall_curve(
    ranked: Mapping[str, Sequence[object]],
    relevant: Mapping[str, set[Any]],
    ks: Sequence[int],
) -> list[float]:
    """Recall@k of ``ranked`` lists for every ``k`` in ``ks`` (mean over users with relevant items).

    Raises:
        MetricsError: A ``k`` is not positive or no user has a relevant item.
    """
    return [ranking_metrics(ranked, relevant, k, min(k, 10))[f"recall_at_{k}"] for k in ks]


def auc_by_round(
    native: Any, matrix: np.ndarray, labels: np.ndarray
) -> tuple[list[int], list[float]]:
    """Hold-out AUC of a fitted ``XGBClassifier`` after each boosting round (a learning curve).

    Returns:
        The rounds (1-based, at most 30 evenly spaced) and the AUC after each.
    """
    total = int(native.get_booster().num_boosted_rounds())
    rounds = sorted({int(r) for r in np.linspace(1, total, num=min(total, 30))})
    scores: list[float] = []
    for r in rounds:
        proba = native.predict_proba(matrix, iteration_range=(0, r))[:, 1]
        try:
            scores.append(auc(labels, proba))
        except MetricsError:
            scores.append(float("nan"))
    return rounds, scores


__all__ = [
    "auc_by_round",
    "feature_importance_figure",
    "metric_curves_figure",
    "png_bytes",
    "recall_curve",
]
