"""How long-running steps report progress: a callable that takes one line of text.

The CLI passes a spinner's update function; libraries and tests pass ``quiet``.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
"""Receives one human-readable progress line per step."""


def quiet(_: str) -> None:
    """A ``Progress`` that says nothing."""
