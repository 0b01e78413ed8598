"""Test helper: settings whose offline store is a chdb folder of the test's own."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.features.spec import ProjectFeatures


def with_offline_store(
    settings: Settings, folder: Path, projects: Mapping[str, ProjectFeatures] | None = None
) -> Settings:
    """``settings`` with the offline store in ``folder`` (chdb allows one process per
    folder, so each test module keeps its own) and ``projects`` declared beside the
    configured ones."""
    update: dict[str, object] = {
        "offline_store": ClickHouseOfflineStoreConfig(dsn=f"chdb://{folder}")
    }
    if projects:
        update["projects"] = {**settings.projects, **projects}
    return settings.model_copy(update=update)
