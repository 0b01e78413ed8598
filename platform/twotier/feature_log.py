"""Served feature vectors in the recommendation log, for the training/serving skew check.

A ``/recommend`` request is sampled with probability ``serving.feature_log_fraction``;
every item served by a sampled request carries, in its ``recommendation`` event's
context, the tier-two input row it was ranked on (``features``: a compact JSON object
``{column: value}`` in ``spec.columns()`` order) and the time the features were read
(``features_ts``, ms). The ``feature_skew`` pipeline asset compares these rows with the
offline store's point-in-time values for the same user, item and time.

Example:
    >>> text = encode_features(["user_stats.views", "request.tier1_rank"], [3.0, 0.0])
    >>> text
    '{"user_stats.views":3.0,"request.tier1_rank":0.0}'
    >>> decode_features(text)
    {'user_stats.views': 3.0, 'request.tier1_rank': 0.0}
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

FEATURES_KEY = "features"
"""Context key of a sampled recommendation's tier-two input row (JSON object)."""
FEATURES_TS_KEY = "features_ts"
"""Context key of the time (ms) the served features were read (recency is relative to it)."""


class FeatureLogError(ValueError):
    """A logged feature vector or a sampling fraction is not what the log expects."""


def check_fraction(fraction: float) -> float:
    """Return ``fraction`` if it is a probability (0 to 1), else raise ``FeatureLogError``."""
    if not isinstance(fraction, int | float) or not 0.0 <= float(fraction) <= 1.0:
        raise FeatureLogError(
            f"feature log fraction {fraction!r} is not a probability: use 0 (log none), "
            "1 (log every request) or a value in between, e.g. 0.01"
        )
    return float(fraction)


def sample_request(fraction: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether to log this request's feature rows: true with probability ``fraction``.

    ``draw`` returns a uniform value in ``[0, 1)`` (``random.random``), so 0 never logs
    and 1 always does.

    Raises:
        FeatureLogError: ``fraction`` is not between 0 and 1.
    """
    fraction = check_fraction(fraction)
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    return draw() < fraction


def encode_features(columns: Sequence[str], row: Sequence[Any]) -> str:
    """One served row as compact JSON ``{column: value}``; floats round-trip exactly.

    A float32 value is written as the float64 it converts to exactly, so decoding gives
    back the served value bit for bit (NaN and infinities as JSON's ``NaN``/``Infinity``).

    Raises:
        FeatureLogError: The row and the columns differ in length.
    """
    if len(columns) != len(row):
        raise FeatureLogError(
            f"feature row has {len(row)} values for {len(columns)} columns {list(columns)[:5]}"
            "...: log the model's whole input row, in spec.columns() order"
        )
    return json.dumps(
        {c: float(v) for c, v in zip(columns, row, strict=True)}, separators=(",", ":")
    )


def decode_features(text: str) -> dict[str, float]:
    """The ``{column: value}`` of a logged row (``encode_features``'s inverse).

    Raises:
        FeatureLogError: The text is not a JSON object of numbers.
    """
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise FeatureLogError(
            f"context[{FEATURES_KEY!r}] {str(text)[:80]!r} is not JSON ({exc}): it must be "
            "a JSON object {column: number}, as twotier.feature_log.encode_features writes"
        ) from None
    if not isinstance(data, dict):
        raise FeatureLogError(
            f"context[{FEATURES_KEY!r}] holds a {type(data).__name__}, not a JSON object "
            "{column: number}"
        )
    out: dict[str, float] = {}
    for column, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FeatureLogError(
                f"context[{FEATURES_KEY!r}]: column {column!r} holds {value!r}; every value "
                "must be a number"
            )
        out[str(column)] = float(value)
    return out
