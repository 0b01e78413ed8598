"""From stored raw values to a feature group's columns: the one place derivations live.

Online reads and offline training sets both call ``group_matrix``, so a rate or a recency
is computed the same way at training and at serving time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twotier.features.spec import (
    CounterFeature,
    FeatureGroup,
    LastSeenFeature,
    RateFeature,
    RecencyFeature,
)


def raw_defaults(group: FeatureGroup) -> dict[str, float]:
    """The value of each stored field for an entity the store has never seen."""
    defaults: dict[str, float] = {}
    for f in group.raw_features():
        if isinstance(f, CounterFeature) and f.by:
            defaults.update({f"{f.name}__{v}": f.default for v in f.values})
        else:
            defaults[f.name] = f.default
    return defaults


def raw_arrays(
    group: FeatureGroup, docs: Sequence[Mapping[str, Any] | None]
) -> dict[str, np.ndarray]:
    """Stored fields of ``docs`` (None = unknown entity) as float64 arrays, defaults filled."""
    defaults = raw_defaults(group)
    out: dict[str, np.ndarray] = {}
    for field, default in defaults.items():
        out[field] = np.fromiter(
            (
                default if doc is None or doc.get(field) is None else float(doc[field])
                for doc in docs
            ),
            dtype=np.float64,
            count=len(docs),
        )
    return out


def decay_to(feature: CounterFeature, now_ms: float | np.ndarray) -> float | np.ndarray:
    """The factor turning a decayed counter's stored weights into its value at ``now_ms``.

    Example:
        >>> f = CounterFeature(name="v", action="view", half_life_days=1, reference_ts=0)
        >>> stored = f.decay_weight(0) + f.decay_weight(86_400_000)  # two views, a day apart
        >>> float(stored * decay_to(f, 2 * 86_400_000))  # two days after the first
        0.75
    """
    days = (np.asarray(now_ms, dtype=np.float64) - feature.reference_ts) / 86_400_000.0
    return np.exp2(-days / float(feature.half_life_days or 1.0))


def group_matrix(
    group: FeatureGroup, raw: Mapping[str, np.ndarray], now_ms: float | np.ndarray
) -> np.ndarray:
    """The group's columns (``group.columns()`` order) for ``n`` entities.

    Args:
        group: The feature group.
        raw: Stored field name -> float array of length ``n`` (``raw_arrays`` output).
        now_ms: Request time in ms, scalar or one per row (offline: each row's own time).

    Returns:
        A float64 array of shape ``(n, len(group.columns()))``.
    """
    n = len(next(iter(raw.values()))) if raw else 0
    counters = {f.name: f for f in group.features if isinstance(f, CounterFeature)}

    def decayed(name: str) -> np.ndarray:
        """A counter's value at ``now_ms`` (its stored value unless it decays)."""
        counter = counters[name]
        if counter.half_life_days is None:
            return raw[name]
        return raw[name] * decay_to(counter, now_ms)

    columns: list[np.ndarray] = []
    for f in group.column_features():
        if isinstance(f, CounterFeature) and f.by:
            scale = decay_to(f, now_ms) if f.half_life_days is not None else 1.0
            columns.extend(raw[f"{f.name}__{v}"] * scale for v in f.values)
        elif isinstance(f, CounterFeature) and f.half_life_days is not None:
            columns.append(decayed(f.name))
        elif isinstance(f, CounterFeature | LastSeenFeature):
            columns.append(raw[f.name])
        elif isinstance(f, RateFeature):
            num, den = decayed(f.numerator), decayed(f.denominator)
            denominator = den + f.prior_weight
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = (num + f.prior_mean * f.prior_weight) / denominator
            columns.append(np.where(denominator > 0, rate, f.prior_mean))
        elif isinstance(f, RecencyFeature):
            last = raw[f.of]
            seconds = (np.asarray(now_ms, dtype=np.float64) - last) / 1000.0
            columns.append(np.where(last > 0, np.maximum(seconds, 0.0), f.default))
    if not columns:
        return np.zeros((n, 0))
    return np.column_stack(columns).astype(np.float64, copy=False)
