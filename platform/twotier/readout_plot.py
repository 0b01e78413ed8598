"""The readout plot: one metric of an experiment by day, one line per group, with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from twotier.readout import METRIC_LABELS


def readout_figure(
    intervals: pd.DataFrame, experiment: str, shuffle: int, metric: str, control: str
) -> Figure:
    """Each group's ``metric`` per day (``readout.group_intervals``) with its 95% interval.

    Args:
        intervals: Columns ``day, group, value, low, high``.
        experiment: For the title.
        shuffle: The generation, for the title.
        metric: The metric key, for the axis label.
        control: The control group (drawn first, in black).
    """
    figure = Figure(figsize=(7.5, 3.8), layout="constrained")
    axes = figure.add_subplot()
    groups = list(dict.fromkeys([control, *sorted(intervals["group"].unique())]))
    days = sorted(intervals["day"].unique())
    position = {d: i for i, d in enumerate(days)}
    # Groups side by side within a day (dodged), each point with its interval as an error
    # bar: overlapping bands would hide each other, and a single day has no band at all.
    width = 0.3
    for k, group in enumerate(groups):
        rows = intervals[intervals["group"] == group].sort_values("day")
        if rows.empty:
            continue
        offset = (k - (len(groups) - 1) / 2) * width / max(1, len(groups) - 1)
        x = np.array([position[d] for d in rows["day"]], dtype=float) + offset
        value = rows["value"].to_numpy(dtype=float)
        low = rows["low"].to_numpy(dtype=float)
        high = rows["high"].to_numpy(dtype=float)
        errors = np.nan_to_num(np.vstack([value - low, high - value]), nan=0.0)
        axes.errorbar(
            x,
            value,
            yerr=errors,
            marker="o",
            capsize=4,
            label=group,
            color="black" if group == control else None,
            linestyle="-" if len(days) > 1 else "none",
        )
    axes.set_xticks(range(len(days)), [d[5:] for d in days], rotation=45 if len(days) > 8 else 0)
    axes.set_xlim(-0.5, max(len(days), 1) - 0.5)
    axes.set_xlabel("serve day (UTC)")
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.set_title(f"{experiment} (shuffle {shuffle}): {METRIC_LABELS.get(metric, metric)}, 95% CI")
    axes.grid(alpha=0.3)
    if groups:
        axes.legend(title="group", loc="best")
    return figure
