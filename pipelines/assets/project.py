"""What a project's assets know about the project at definition time."""

from __future__ import annotations

from twotier.config import Settings
from twotier.features.spec import ProjectFeatures


def project_settings(project: str, features: ProjectFeatures) -> Settings:
    """Settings declaring only ``project``, for core functions that look a project up.

    Built without reading the environment: the assets get every location from their
    resources, and the project's declaration from ``make_project_assets``.
    """
    return Settings.model_construct(projects={project: features})
