"""The parity gate: an exported model must predict what the native model predicts."""

from __future__ import annotations

import numpy as np

from twotier.errors import TwotierError

PARITY_TOLERANCE = 1e-4
"""The largest absolute difference allowed between ONNX and native outputs."""


class ParityError(TwotierError):
    """An ONNX export disagrees with its native model: registration must be refused."""


def check_parity(
    what: str,
    native: np.ndarray,
    exported: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """The max abs difference of two outputs, or ``ParityError`` when it exceeds ``tolerance``.

    Args:
        what: The model and output compared, for the message (e.g. ``"tier one scores"``).
        native: The native model's output.
        exported: The ONNX model's output for the same input.
        tolerance: The largest difference allowed.

    Raises:
        ParityError: Shapes differ, an output is not finite, or the gap exceeds ``tolerance``.
    """
    a = np.asarray(native, dtype=np.float64)
    b = np.asarray(exported, dtype=np.float64)
    if a.shape != b.shape:
        raise ParityError(
            f"{what}: ONNX output shape {b.shape} differs from the native {a.shape}: "
            "the export is broken; do not register it"
        )
    if a.size == 0:
        raise ParityError(f"{what}: no rows to compare; check parity on a non-empty sample")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ParityError(f"{what}: non-finite outputs; do not register the model")
    gap = float(np.max(np.abs(a - b)))
    if gap > tolerance:
        raise ParityError(
            f"{what}: ONNX and native outputs differ by {gap:.3e} (> {tolerance:g}) on "
            f"{a.shape[0]} rows: registration refused; re-export the model and check the "
            "converter versions"
        )
    return gap


__all__ = ["PARITY_TOLERANCE", "ParityError", "check_parity"]
