"""Every name a project owns, in one place, so two projects never share data.

Kafka topics, online collections, offline tables, MLflow models and Dagster asset
keys are all derived from the project name here.
"""

from __future__ import annotations

import re

_PROJECT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def check_project(project: str) -> str:
    """Return ``project`` if it is a valid project name, else raise ``ValueError``."""
    if not _PROJECT.match(project):
        raise ValueError(
            f"invalid project name {project!r}: use 1-40 lowercase letters, digits or '_', "
            "starting with a letter"
        )
    return project


def events_topic(project: str) -> str:
    """The Kafka topic of a project's user events."""
    return f"twotier.{check_project(project)}.events"


def dead_letter_topic(project: str) -> str:
    """The Kafka topic where malformed events of a project go, with the reason."""
    return f"twotier.{check_project(project)}.dead_letter"


def online_collection(project: str, feature_group: str) -> str:
    """The online-store collection of one feature group (no dots: FerretDB v1 limits)."""
    return f"{check_project(project)}__{feature_group}"


def offline_table(project: str, table: str) -> str:
    """The offline-store table of a project (``<project>__<table>``)."""
    return f"{check_project(project)}__{table}"


def model_name(project: str, tier: str, model: str) -> str:
    """The MLflow registered-model name ``<project>.<tier>.<model>``."""
    return f"{check_project(project)}.{tier}.{model}"


def asset_prefix(project: str) -> list[str]:
    """The Dagster asset-key prefix of a project."""
    return [check_project(project)]
