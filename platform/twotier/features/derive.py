"""From stored raw values to a feature group's columns: the one place derivations live.

Online reads and offline training sets both call ``group_matrix``, so a rate or a recency
is computed the same way at training and at serving time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twotier.features.spec import (
    AttributeFeature,
    CounterFeature,
    FeatureGroup,
    LastSeenFeature,
    ModelFeatureSpec,
    RateFeature,
    RecencyFeature,
    affinity_inputs,
    value_field,
)


def raw_defaults(group: FeatureGroup) -> dict[str, float]:
    """The value of each stored field for an entity the store has never seen.

    A multi-hot attribute's fields are 0 (the item holds none of the values).
    """
    defaults: dict[str, float] = {}
    for f in group.features:
        if isinstance(f, AttributeFeature):
            defaults.update({field: 0.0 if f.values else f.default for field in f.fields()})
    for f in group.raw_features():
        if isinstance(f, CounterFeature) and f.by:
            defaults.update({value_field(f.name, v): f.default for v in f.values})
        else:
            defaults[f.name] = f.default
    return defaults


def attribute_values(feature: AttributeFeature, value: Any) -> list[float]:
    """An item attribute (string, number, list of them or None) as the feature's fields.

    Example:
        >>> genre = AttributeFeature(name="genre", attribute="genres",
        ...                          values=("Drama", "Comedy", "War"))
        >>> attribute_values(genre, ["War", "Drama"])
        [1.0, 0.0, 1.0]
        >>> year = AttributeFeature(name="year", attribute="year", default=-1)
        >>> attribute_values(year, ["1995"]), attribute_values(year, "n/a")
        ([1995.0], [-1.0])
    """
    if value is None:
        held: list[Any] = []
    elif isinstance(value, list | tuple | np.ndarray):
        held = list(value)
    else:
        held = [value]
    if feature.values:
        present = {str(v) for v in held}
        return [1.0 if v in present else 0.0 for v in feature.values]
    try:
        number = float(held[0])
    except (IndexError, TypeError, ValueError):
        return [feature.default]
    return [number if np.isfinite(number) else feature.default]


def static_arrays(
    group: FeatureGroup, items: Sequence[Mapping[str, Any] | None]
) -> dict[str, np.ndarray]:
    """A static group's fields from item data (attribute name -> value; None = unknown)."""
    out: dict[str, list[float]] = {field: [] for field in group.stored_fields()}
    for f in group.features:
        if not isinstance(f, AttributeFeature):
            continue
        fields = f.fields()
        for item in items:
            decoded = attribute_values(f, None if item is None else item.get(f.attribute))
            for field, value in zip(fields, decoded, strict=True):
                out[field].append(value)
    return {field: np.asarray(values, dtype=np.float64) for field, values in out.items()}


def raw_arrays(
    group: FeatureGroup, docs: Sequence[Mapping[str, Any] | None]
) -> dict[str, np.ndarray]:
    """Stored fields of ``docs`` (None = unknown entity) as float64 arrays, defaults filled.

    For a static group ``docs`` are item data documents (``static_arrays``).
    """
    if group.static:
        return static_arrays(group, docs)
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
            columns.extend(raw[value_field(f.name, v)] * scale for v in f.values)
        elif isinstance(f, CounterFeature) and f.half_life_days is not None:
            columns.append(decayed(f.name))
        elif isinstance(f, AttributeFeature):
            columns.extend(raw[field] for field in f.fields())
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


def affinity_matrix(
    spec: ModelFeatureSpec, raws: Sequence[Mapping[str, np.ndarray]], n_rows: int
) -> np.ndarray:
    """The model's affinity columns (``spec.model.affinities`` order) for ``n_rows`` rows.

    Args:
        spec: The model's spec.
        raws: Per group of ``spec.groups``, its stored fields (``raw_arrays``), each of
            length ``n_rows`` or 1 (a user group read once, broadcast).
        n_rows: Number of rows (candidates).

    Returns:
        A float64 array of shape ``(n_rows, len(spec.model.affinities))``.

    Example:
        >>> from twotier.features.builtin import builtin_projects
        >>> spec = builtin_projects()["movielens"].model_spec("ranker")
        >>> groups = [g.name for g in spec.groups]
        >>> raws = [raw_arrays(g, [None]) for g in spec.groups]
        >>> raws[groups.index("user_genres")]["views_by_genre__Drama"] = np.array([3.0])
        >>> raws[groups.index("user_genres")]["views_by_genre__Comedy"] = np.array([1.0])
        >>> raws[groups.index("item_attrs")] = static_arrays(
        ...     spec.groups[groups.index("item_attrs")],
        ...     [{"genres": ["Drama"]}, {"genres": ["Comedy", "Drama"]}, None])
        >>> affinity_matrix(spec, raws, 3)[:, 0].tolist()  # views in the item's genres
        [0.75, 1.0, 0.0]
    """
    out = np.empty((n_rows, len(spec.model.affinities)), dtype=np.float64)
    for col, affinity in enumerate(spec.model.affinities):
        ui, counter, ii, attribute = affinity_inputs(spec, affinity)
        total = np.zeros(1, dtype=np.float64)
        hits = np.zeros(1, dtype=np.float64)
        for value in attribute.values:
            counts = raws[ui][value_field(counter.name, value)]
            total = total + counts
            hits = hits + counts * raws[ii][value_field(attribute.name, value)]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(total > 0, hits / total, affinity.default)
        out[:, col] = np.broadcast_to(share, (n_rows,))
    return out
