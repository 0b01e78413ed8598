"""Asset keys, group names and the models of a project's asset graph.

Every key is ``[<project>, <name>]`` (``twotier.naming.asset_prefix``); names say what
the asset holds, and model assets mirror the registered model names::

    events_offline, items_offline, feature_snapshots,
    training_set_tier1, training_set_tier2_<model>, experiment_training_sets,
    tier1_candidates, tier2_<model>, promotion,
    recommendation_outcomes, experiment_readout, feature_skew
"""

from __future__ import annotations

import dagster as dg

from twotier.features.spec import ProjectFeatures
from twotier.naming import asset_prefix

TIER_ONE_MODEL = "candidates"
"""The tier-one model of every project: ``<project>.tier1.candidates``."""

EVENTS_OFFLINE = "events_offline"
ITEMS_OFFLINE = "items_offline"
FEATURE_SNAPSHOTS = "feature_snapshots"
TRAINING_SET_TIER_ONE = "training_set_tier1"
EXPERIMENT_TRAINING_SETS = "experiment_training_sets"
TIER_ONE = f"tier1_{TIER_ONE_MODEL}"
PROMOTION = "promotion"
RECOMMENDATION_OUTCOMES = "recommendation_outcomes"
EXPERIMENT_READOUT = "experiment_readout"
FEATURE_SKEW = "feature_skew"
DAILY_ASSETS = frozenset({RECOMMENDATION_OUTCOMES, EXPERIMENT_READOUT, FEATURE_SKEW})
"""The assets partitioned by serve day (the readout job's); every other partitioned asset
is partitioned by training month, and one run holds either kind, never both."""


def asset_key(project: str, name: str) -> dg.AssetKey:
    """The key ``<project>/<name>``."""
    return dg.AssetKey([*asset_prefix(project), name])


def training_set_tier_two(model: str) -> str:
    """The asset name of a tier-two model's training set."""
    return f"training_set_tier2_{model}"


def tier_two(model: str) -> str:
    """The asset name of a tier-two model."""
    return f"tier2_{model}"


def group_name(project: str, group: str) -> str:
    """The Dagster group of a project's assets of one kind, e.g. ``movielens_models``."""
    return f"{project}_{group}"


def tier_two_models(features: ProjectFeatures) -> list[str]:
    """The tier-two model names declared for a project, in declaration order."""
    return [m.name for m in features.models if m.tier == "tier2"]
