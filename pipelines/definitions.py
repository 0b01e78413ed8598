"""The Dagster code location of twotier: ``defs`` holds every project's assets and resources.

Resources come from ``twotier.config.load_settings()`` when this module loads, so
``TWOTIER_*`` variables (or ``TWOTIER_CONFIG``) point the whole location at a stack.
"""

from __future__ import annotations

import dagster as dg

from twotier.config import Settings, load_settings
from twotier.pipelines.assets import make_project_assets
from twotier.pipelines.resources import make_resources

PROJECTS: tuple[str, ...] = ("movielens",)
"""Projects whose assets this code location serves."""


def make_definitions(settings: Settings, projects: tuple[str, ...] = PROJECTS) -> dg.Definitions:
    """The definitions of ``projects`` with resources pointing at ``settings``' stack."""
    assets = [asset for project in projects for asset in make_project_assets(project)]
    return dg.Definitions(assets=assets, resources=make_resources(settings))


_settings = load_settings()
# The configured default project is served too (until projects are declared in config).
defs = make_definitions(_settings, tuple(dict.fromkeys((*PROJECTS, _settings.project))))
