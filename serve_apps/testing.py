"""Tiny real models of both tiers on synthetic data, for serving tests and the benchmark.

They are trained with the platform's own functions (``train_tier_one``, ``export_tier_one``,
``train_tier_two_frame``) and registered with ``twotier.registry.register_onnx`` exactly as
the pipelines register theirs, only on a few hundred synthetic rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotier.features.spec import ModelFeatureSpec
from twotier.models.tier_one import (
    TierOneModel,
    TierOneParams,
    TierOneSession,
    export_tier_one,
    train_tier_one,
)
from twotier.models.tier_two import TierTwoModel, TierTwoParams, train_tier_two_frame
from twotier.naming import model_name
from twotier.registry import ModelVersionRef, register_onnx


def item_ids(n_items: int) -> list[str]:
    """The synthetic catalogue: ``"1" .. str(n_items)``."""
    return [str(i) for i in range(1, n_items + 1)]


def tiny_tier_one(
    n_users: int = 40, n_items: int = 60, seed: int = 0, factors: int = 4, top_k: int = 50
) -> TierOneModel:
    """Implicit ALS on random views: users ``"1".."n_users"``, items ``"1".."n_items"``."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, size=n_users * 8)
    # Skewed item popularity, so the popularity fallback has a clear order.
    items = np.minimum(rng.zipf(1.3, size=len(users)), n_items)
    frame = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str)})
    extra = pd.DataFrame({"user_id": "1", "item_id": item_ids(n_items)})  # every item known
    params = TierOneParams(factors=factors, iterations=2, top_k=min(top_k, n_items), seed=seed)
    return train_tier_one(pd.concat([frame, extra], ignore_index=True), params)


def tiny_tier_two(spec: ModelFeatureSpec, seed: int = 0, rows: int = 300) -> TierTwoModel:
    """A few boosted trees on random features; ``seed`` changes which columns matter."""
    rng = np.random.default_rng(seed)
    columns = spec.columns()
    x = rng.gamma(2.0, 3.0, size=(rows, len(columns))).astype(np.float32)
    weights = rng.normal(size=len(columns))
    logits = (x - x.mean(axis=0)) @ weights / max(1.0, np.sqrt(len(columns)))
    label = (logits + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    frame = pd.DataFrame(x, columns=columns)
    frame["ts"] = np.arange(rows, dtype=np.int64) + 1
    frame["label"] = label
    params = TierTwoParams(n_estimators=6, max_depth=3, random_state=seed)
    return train_tier_two_frame(frame, spec, cutoff_ts=int(rows * 0.7), params=params)


def register_tier_one(
    tracking_uri: str,
    project: str,
    model: TierOneModel,
    alias: str | None = "champion",
    experiment: str | None = None,
) -> ModelVersionRef:
    """Register ``model`` as ``<project>.tier1.candidates`` (no feature spec, tier tag)."""
    return register_onnx(
        export_tier_one(model),
        tracking_uri=tracking_uri,
        name=model_name(project, "tier1", "candidates"),
        feature_names=[],
        experiment=experiment or f"{project}-serving",
        alias=alias,
        spec=None,
        tags={"twotier.tier": "tier1"},
    )


def register_tier_two(
    tracking_uri: str,
    project: str,
    model: TierTwoModel,
    alias: str | None = "champion",
    experiment: str | None = None,
) -> ModelVersionRef:
    """Register ``model`` as ``<project>.tier2.<spec model>`` with its spec and tier tag."""
    return register_onnx(
        model.onnx_model,
        tracking_uri=tracking_uri,
        name=model_name(project, "tier2", model.spec.model.name),
        feature_names=model.columns,
        experiment=experiment or f"{project}-serving",
        metrics=model.metrics,
        alias=alias,
        spec=model.spec,
        tags={"twotier.tier": "tier2"},
    )


def tier_one_session(model: TierOneModel) -> TierOneSession:
    """The ONNX session serving ``model`` (the expected answers of a test)."""
    return TierOneSession(export_tier_one(model))
