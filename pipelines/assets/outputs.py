"""What a model asset hands to the assets downstream of it (through the IO manager)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RegisteredModel:
    """A model version registered by a model asset, with the outcome of its checks.

    Attributes:
        project: The project.
        tier: ``tier1`` or ``tier2``.
        model: The model name within the tier (``candidates``, ``ranker``...).
        name: The registered model name ``<project>.<tier>.<model>``.
        version: The new registered version (no alias was moved).
        run_id: The MLflow run that logged it.
        cutoff_ts: The temporal split (ms) the model was trained before.
        metrics: The metrics logged to the run.
        checks: Check name -> passed, for the checks whose failure blocks promotion.
        onnx_bytes: The registered ONNX graph (tier one's is needed to evaluate tier two).
    """

    project: str
    tier: str
    model: str
    name: str
    version: str
    run_id: str
    cutoff_ts: int
    metrics: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    onnx_bytes: bytes = b""

    @property
    def blocking_failures(self) -> list[str]:
        """The names of the blocking checks that failed."""
        return sorted(name for name, passed in self.checks.items() if not passed)
