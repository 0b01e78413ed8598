"""Dagster assets of twotier, one folder per group and one module per asset.

``make_project_assets(project)`` is what ``definitions.py`` asks for: every asset and
asset check of one project, keyed ``<project>/<asset>``.
"""

from __future__ import annotations

from typing import Any

from twotier.pipelines.assets.skeleton import make_skeleton_assets


def make_project_assets(project: str) -> list[Any]:
    """Every asset and asset check of ``project`` (keys start with ``<project>/``)."""
    return list(make_skeleton_assets(project))
