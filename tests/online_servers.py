"""Test helper: the same settings with the online store on another local server."""

from __future__ import annotations

from twotier.config import Settings

SERVERS = ("secantusdb", "ferretdb")
"""The local MongoDB-wire servers the contract tests run on."""


def with_online_server(settings: Settings, server: str) -> Settings:
    """``settings`` with the online store on the local ``server`` (secantusdb, ferretdb)."""
    stack = settings.stack.model_copy(update={"online_server": server})
    return settings.model_copy(update={"stack": stack})
