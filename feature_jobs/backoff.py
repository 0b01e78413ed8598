"""Bounded exponential backoff for the feature jobs' retries (missing topic, store down, …)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """How long to wait before each retry: ``initial_s * factor**(attempt-1)``, at most ``max_s``.

    Attributes:
        initial_s: The first wait.
        max_s: No wait is longer than this.
        factor: Growth per failed attempt.
        max_attempts: Give up after this many failures in a row (``None``: never).
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    factor: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError(
                f"invalid backoff {self}: need initial_s > 0, max_s >= initial_s, factor >= 1"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts is {self.max_attempts}: use >= 1, or None for forever")

    def delay(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failure in a row (1-based)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1)))

    def gives_up(self, attempt: int) -> bool:
        """True when ``attempt`` failures in a row are too many."""
        return self.max_attempts is not None and attempt >= self.max_attempts
