"""The error every twotier component raises for a condition a person must fix."""

from __future__ import annotations


class TwotierError(RuntimeError):
    """A failure with a known cause; ``str()`` is one line naming the thing, cause and fix."""
