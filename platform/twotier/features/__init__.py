"""Feature groups, model features and the feature store API of twotier.

The spec classes import eagerly; the store-backed API (``OnlineFeatures``,
``historical_features`` ...) is imported on first use, because ``twotier.config`` itself
imports this package's specs and serving code should not pay for clients it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from twotier.features.aggregate import GroupUpdates, aggregate, entity_id
from twotier.features.spec import (
    FeatureGroup,
    ModelFeatures,
    ModelFeatureSpec,
    ProjectFeatures,
    RequestFeature,
)

if TYPE_CHECKING:
    from twotier.features.offline import (
        historical_features,
        materialize_all_snapshots,
        materialize_snapshots,
        training_set,
    )
    from twotier.features.online import OnlineFeatures, assemble_matrix, read_ids

# name -> module of the lazily imported part of the API
_LAZY: dict[str, str] = {
    "OnlineFeatures": "twotier.features.online",
    "assemble_matrix": "twotier.features.online",
    "read_ids": "twotier.features.online",
    "historical_features": "twotier.features.offline",
    "materialize_all_snapshots": "twotier.features.offline",
    "materialize_snapshots": "twotier.features.offline",
    "training_set": "twotier.features.offline",
}

__all__ = [
    "FeatureGroup",
    "GroupUpdates",
    "ModelFeatureSpec",
    "ModelFeatures",
    "OnlineFeatures",
    "ProjectFeatures",
    "RequestFeature",
    "aggregate",
    "assemble_matrix",
    "entity_id",
    "historical_features",
    "materialize_all_snapshots",
    "materialize_snapshots",
    "read_ids",
    "training_set",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'twotier.features' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
