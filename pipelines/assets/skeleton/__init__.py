"""The walking-skeleton assets of a project: Kafka events → offline store → ranker.

Superseded by the per-project graph of ``make_project_assets``; kept for
``materialize_skeleton`` and its tests until those are retired.
"""

from __future__ import annotations

import dagster as dg

from twotier.pipelines.assets.ingest.events_offline import (
    events_offline_key,
    make_events_offline,
)
from twotier.pipelines.assets.skeleton.ranker_model import make_ranker_model, ranker_model_key

__all__ = [
    "events_offline_key",
    "make_events_offline",
    "make_ranker_model",
    "make_skeleton_assets",
    "ranker_model_key",
]


def make_skeleton_assets(project: str) -> list[dg.AssetsDefinition]:
    """The skeleton assets of ``project``, keyed ``<project>/<asset>``."""
    return [make_events_offline(project), make_ranker_model(project)]
