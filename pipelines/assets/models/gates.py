"""The promotion gates of the model assets, as pure functions (unit tested).

Each gate gives ``(passed, value, message)``, or a ``Decision`` where the sample may be
too small to decide; the model assets turn them into blocking ERROR (or informative
WARN) asset checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

Gate = tuple[bool, float, str]

Verdict = Literal["pass", "fail", "inconclusive"]
BASELINES = ("popularity", "recent_popularity")


@dataclass(frozen=True)
class Decision:
    """A gate that may not be able to decide.

    Attributes:
        verdict: ``pass``, ``fail`` (blocks promotion) or ``inconclusive`` (a WARN: the
            sample cannot tell; promotion goes on to compare with the champion).
        value: The number the verdict is about (the smallest ratio to a baseline).
        message: One line for the check's description.
    """

    verdict: Verdict
    value: float
    message: str

    @property
    def blocks(self) -> bool:
        """Whether the verdict stops the promotion."""
        return self.verdict == "fail"


def known_users_gate(
    metrics: Mapping[str, float], ndcg_k: int, min_users: int, min_gain: float = 0.0
) -> Decision:
    """NDCG@ndcg_k of the two tiers on known users against both popularity baselines.

    Known users are those tier one was trained on (cold users get the fallback and are
    reported apart). The ratios and their 95% bootstrap intervals come from
    ``evaluate_two_tiers``.

    * fewer than ``min_users`` known hold-out users: inconclusive;
    * a ratio at most ``1 + min_gain`` against either baseline: fail;
    * every interval above 1 (better, beyond what resampling users explains): pass;
    * otherwise (better on the point, but an interval reaching 1): inconclusive.

    Raises:
        KeyError: A metric is missing (the message names it).
    """
    names = ["eval_known_users"] + [
        f"two_tier_known_ndcg_ratio_vs_{b}{s}" for b in BASELINES for s in ("", "_ci_low")
    ]
    users = metrics.get("eval_known_users", 0.0)
    if users < min_users:
        return Decision(
            "inconclusive",
            float(users),
            f"only {users:.0f} known hold-out users (fewer than {min_users}): too few to "
            f"compare NDCG@{ndcg_k} with popularity",
        )
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"evaluation metrics lack {missing}; have {sorted(metrics)[:8]}")
    parts, ratios, lows = [], [], []
    for baseline in BASELINES:
        key = f"two_tier_known_ndcg_ratio_vs_{baseline}"
        ratio, low = metrics[key], metrics[f"{key}_ci_low"]
        high = metrics.get(f"{key}_ci_high", math.nan)
        ratios.append(ratio if not math.isnan(ratio) else math.inf)
        lows.append(low)
        parts.append(f"{ratio:.2f}x {baseline.replace('_', ' ')} [{low:.2f}, {high:.2f}]")
    summary = f"NDCG@{ndcg_k} on {users:.0f} known users: " + ", ".join(parts)
    worst = min(ratios)
    if worst <= 1.0 + min_gain:
        return Decision("fail", worst, f"{summary}; needs > {1.0 + min_gain:g}x both")
    if all(low > 1.0 for low in lows):
        return Decision("pass", worst, summary)
    return Decision("inconclusive", worst, f"{summary}; an interval reaches 1x")


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


def recall_gate(metrics: Mapping[str, float], k: int) -> Gate:
    """Tier one's candidates hold at least as many hold-out items as all-time popularity's."""
    model, base = metrics[f"two_tier_recall_at_{k}"], metrics[f"popularity_recall_at_{k}"]
    passed = model >= base
    return (
        passed,
        model - base,
        f"Recall@{k} {model:.4f} vs popularity {base:.4f} ({model - base:+.4f})",
    )


def gate_check(
    check: str, gate: Gate, severity: dg.AssetCheckSeverity, metadata: Mapping[str, Any]
) -> dg.AssetCheckResult:
    """The asset check result of ``gate``: passed and description from it."""
    return dg.AssetCheckResult(
        check_name=check,
        passed=gate[0],
        severity=severity,
        description=gate[2],
        metadata=dict(metadata),
    )


def parity_gate(gap: float, tolerance: float) -> Gate:
    """ONNX and native outputs agree within ``tolerance`` (the export already refused more)."""
    passed = gap <= tolerance
    return passed, gap, f"max |ONNX - native| = {gap:.2e} (tolerance {tolerance:g})"
