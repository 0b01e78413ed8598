"""Dagster assets of twotier, one folder per group and one module per asset.

``make_project_assets(project)`` is what ``definitions.py`` asks for: every asset and
asset check of one project, keyed ``<project>/<asset>``::

    items_offline ─────────────────────┐
    events_offline ──(data checks)──► feature_snapshots ──► training_set_tier2_<model> ─┐
          │                                                 (monthly partitions)        │
          └──► training_set_tier1 (monthly partitions) ──► tier1_candidates ──► tier2_<model>
                                      experiment_training_sets ◄─┘       │           │
                                                                         └─► promotion ◄┘
    events_offline ──► recommendation_outcomes ──► experiment_readout (daily partitions)
    events_offline, feature_snapshots ──► feature_skew (daily partitions, skew check)
"""

from __future__ import annotations

from typing import Any

from twotier.features.spec import ProjectFeatures
from twotier.naming import check_project
from twotier.pipelines.assets.experiments.experiment_readout import make_experiment_readout
from twotier.pipelines.assets.experiments.feature_skew import (
    DEFAULT_MAX_MISMATCH_RATE,
    DEFAULT_MIN_ROWS,
    make_feature_skew,
)
from twotier.pipelines.assets.experiments.recommendation_outcomes import (
    make_recommendation_outcomes,
)
from twotier.pipelines.assets.features.feature_snapshots import make_feature_snapshots
from twotier.pipelines.assets.ingest.events_checks import make_events_checks
from twotier.pipelines.assets.ingest.events_offline import make_events_offline
from twotier.pipelines.assets.ingest.items_offline import make_items_offline
from twotier.pipelines.assets.keys import tier_two_models
from twotier.pipelines.assets.models.tier1_candidates import make_tier_one_model
from twotier.pipelines.assets.models.tier2_model import make_tier_two_model
from twotier.pipelines.assets.partitions import (
    DEFAULT_PARTITIONS_START,
    DEFAULT_READOUT_START,
    daily_partitions,
    training_partitions,
)
from twotier.pipelines.assets.promotion.promotion import make_promotion
from twotier.pipelines.assets.training_sets.experiment_training_sets import (
    make_experiment_training_sets,
)
from twotier.pipelines.assets.training_sets.training_set_tier1 import make_training_set_tier_one
from twotier.pipelines.assets.training_sets.training_set_tier2 import make_training_set_tier_two


def make_project_assets(
    project: str,
    features: ProjectFeatures | None = None,
    *,
    partitions_start: str = DEFAULT_PARTITIONS_START,
    readout_start: str = DEFAULT_READOUT_START,
    skew_max_mismatch_rate: float = DEFAULT_MAX_MISMATCH_RATE,
    skew_min_rows: int = DEFAULT_MIN_ROWS,
) -> list[Any]:
    """Every asset and asset check of ``project`` (keys start with ``<project>/``).

    Args:
        project: The project.
        features: Its feature groups, models and experiments; by default those of
            ``twotier.config.load_settings()`` (the environment the code location runs in).
        partitions_start: The first month (``YYYY-MM-DD``) of the training-set partitions.
        readout_start: The first day (``YYYY-MM-DD``) of the daily readout partitions.
        skew_max_mismatch_rate: The skew check fails when a feature mismatches more often.
        skew_min_rows: Below this many sampled rows the skew check only warns.

    Raises:
        ValueError: The project name is invalid.
        ConfigError: ``features`` is None and the project is not declared.
    """
    check_project(project)
    if features is None:
        from twotier.config import load_settings

        features = load_settings().project_features(project)
    partitions = training_partitions(partitions_start)
    days = daily_partitions(readout_start)
    models = tier_two_models(features)
    assets: list[Any] = [
        make_events_offline(project),
        make_events_checks(project, features),
        make_items_offline(project, features),
        make_feature_snapshots(project, features),
        make_training_set_tier_one(project, partitions),
        *(make_training_set_tier_two(project, features, m, partitions) for m in models),
        make_tier_one_model(project),
        *(make_tier_two_model(project, features, m) for m in models),
        make_promotion(project, features),
    ]
    if features.experiments and models:
        assets.append(make_experiment_training_sets(project, features, partitions))
    if models:
        assets.extend(
            make_feature_skew(
                project,
                features,
                days,
                max_mismatch_rate=skew_max_mismatch_rate,
                min_rows=skew_min_rows,
            )
        )
    if features.experiments:
        assets.append(make_recommendation_outcomes(project, features, days))
        assets.append(make_experiment_readout(project, features, days))
    return assets
