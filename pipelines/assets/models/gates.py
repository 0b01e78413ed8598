"""The promotion gates of the model assets, as pure functions (unit tested).

Each gate gives ``(passed, value, message)``; the model assets turn them into blocking
ERROR (or informative WARN) asset checks.
"""

from __future__ import annotations

from collections.abc import Mapping

Gate = tuple[bool, float, str]


def auc_gate(auc: float, floor: float) -> Gate:
    """The hold-out AUC reaches ``floor``."""
    passed = auc >= floor
    return passed, auc, f"hold-out AUC {auc:.4f} " + ("≥" if passed else "<") + f" floor {floor:g}"


def beats_popularity_gate(
    metrics: Mapping[str, float], prefix: str, k: int, ndcg_k: int, min_gain: float
) -> Gate:
    """The model's NDCG@ndcg_k or Recall@k exceeds the popularity baseline's by > ``min_gain``.

    Args:
        metrics: Evaluation metrics holding ``<prefix>_ndcg_at_<ndcg_k>``,
            ``<prefix>_recall_at_<k>`` and the same with ``popularity_``.
        prefix: The model's metric prefix, e.g. ``two_tier`` or ``tier_one``.
        k: The Recall cut-off.
        ndcg_k: The NDCG cut-off.
        min_gain: The margin either metric must beat popularity by.

    Raises:
        KeyError: A metric is missing (the message names it).
    """
    names = [
        f"{prefix}_ndcg_at_{ndcg_k}",
        f"popularity_ndcg_at_{ndcg_k}",
        f"{prefix}_recall_at_{k}",
        f"popularity_recall_at_{k}",
    ]
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"evaluation metrics lack {missing}; have {sorted(metrics)[:8]}")
    ndcg_gain = metrics[names[0]] - metrics[names[1]]
    recall_gain = metrics[names[2]] - metrics[names[3]]
    passed = ndcg_gain > min_gain or recall_gain > min_gain
    best = max(ndcg_gain, recall_gain)
    return (
        passed,
        best,
        f"{prefix} vs popularity: NDCG@{ndcg_k} {metrics[names[0]]:.4f} vs "
        f"{metrics[names[1]]:.4f} ({ndcg_gain:+.4f}), Recall@{k} {metrics[names[2]]:.4f} vs "
        f"{metrics[names[3]]:.4f} ({recall_gain:+.4f}); needs a gain > {min_gain:g}",
    )


def parity_gate(gap: float, tolerance: float) -> Gate:
    """ONNX and native outputs agree within ``tolerance`` (the export already refused more)."""
    passed = gap <= tolerance
    return passed, gap, f"max |ONNX - native| = {gap:.2e} (tolerance {tolerance:g})"
