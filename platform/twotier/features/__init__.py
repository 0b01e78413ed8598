"""Feature groups, model features and the feature store API of twotier.

The spec classes import eagerly; the store-backed API (``OnlineFeatures`` ...) is
imported on first use, because ``twotier.config`` itself imports this package's specs
and serving code should not pay for clients it does not use.
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
    from twotier.features.online import OnlineFeatures, assemble_matrix, read_ids

# name -> module of the lazily imported part of the API
_LAZY: dict[str, str] = {
    "OnlineFeatures": "twotier.features.online",
    "assemble_matrix": "twotier.features.online",
    "read_ids": "twotier.features.online",
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
    "read_ids",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'twotier.features' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
