"""The readout plot: one metric of an experiment by day, one line per group, with intervals."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from twotier.readout import METRIC_LABELS


def readout_figure(
    intervals: pd.DataFrame, experiment: str, shuffle: int, metric: str, control: str
) -> Figure:
    """Each group's ``metric`` per day (``readout.group_intervals``) with its 95% band.

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
    for group in groups:
        rows = intervals[intervals["group"] == group].sort_values("day")
        if rows.empty:
            continue
        x = [position[d] for d in rows["day"]]
        color = "black" if group == control else None
        line = axes.plot(x, rows["value"], marker="o", label=group, color=color)[0]
        axes.fill_between(
            x,
            rows["low"].to_numpy(dtype=float),
            rows["high"].to_numpy(dtype=float),
            alpha=0.2,
            color=line.get_color(),
        )
    axes.set_xticks(range(len(days)), [d[5:] for d in days], rotation=45 if len(days) > 8 else 0)
    axes.set_xlabel("serve day (UTC)")
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.set_title(f"{experiment} (shuffle {shuffle}): {METRIC_LABELS.get(metric, metric)}, 95% CI")
    axes.grid(alpha=0.3)
    if groups:
        axes.legend(title="group", loc="best")
    return figure
