"""Offline metrics of recommenders on a temporal hold-out, and the popularity baseline.

Ranking metrics use binary relevance: an item is relevant to a user if the user acted on
it in the hold-out period. Every metric is averaged over the users that have at least one
relevant item, so a baseline and a model evaluated on the same relevant sets compare.

Example:
    >>> ranked = {"u1": ["a", "b", "c"]}
    >>> relevant = {"u1": {"b"}}
    >>> round(ranking_metrics(ranked, relevant, k=3, ndcg_k=3)["ndcg_at_3"], 4)
    0.6309
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from twotier.errors import TwotierError


class MetricsError(TwotierError, ValueError):
    """A metric cannot be computed from the given input; the message names the fix."""


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise MetricsError(f"k={k!r} is not a positive integer: pass the list length to score")


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Ties count one half (ranks are averaged), as in ``sklearn.metrics.roc_auc_score``.

    Raises:
        MetricsError: Lengths differ, labels are not 0/1, or only one class is present.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise MetricsError(
            f"labels {y.shape} and scores {s.shape} must be 1-D arrays of the same length"
        )
    if not np.isin(y, (0, 1)).all():
        raise MetricsError(f"labels must be 0 or 1; got {sorted(set(y.tolist()))[:5]}")
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise MetricsError(
            f"AUC needs both classes; got {positives} positives and {negatives} negatives: "
            "evaluate on a hold-out that holds both"
        )
    ranks = rankdata(s)  # average ranks of ties
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def dcg_at_k(ranked: Sequence[object], relevant: Collection[object], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` items: sum of ``1 / log2(rank + 1)``."""
    _check_k(k)
    return float(
        sum(1.0 / np.log2(rank + 2) for rank, item in enumerate(ranked[:k]) if item in relevant)
    )


def ndcg_at_k(ranked: Sequence[object], relevant: Collection[object], k: int) -> float:
    """DCG@k over the ideal DCG@k (all relevant items first); 0 with no relevant items."""
    _check_k(k)
    ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg_at_k(ranked, relevant, k) / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[object], relevant: Collection[object], k: int) -> float:
    """Share of the relevant items found in the first ``k`` items; 0 with none relevant."""
    _check_k(k)
    if not relevant:
        return 0.0
    hits = len(set(ranked[:k]) & set(relevant))
    return hits / len(relevant)


def ranking_metrics(
    ranked: Mapping[str, Sequence[object]],
    relevant: Mapping[str, Collection[object]],
    k: int,
    ndcg_k: int = 10,
) -> dict[str, float]:
    """``ndcg_at_<ndcg_k>``, ``recall_at_<k>`` and ``users`` over users with relevant items.

    The averages are over users with at least one relevant item; the keys are valid MLflow
    metric names.

    A user with relevant items but no ranked list scores 0 (nothing was recommended).

    Args:
        ranked: User id -> ranked item ids (best first).
        relevant: User id -> the items the user acted on in the hold-out.
        k: The cut-off of Recall@k (e.g. the tier-one candidate count).
        ndcg_k: The cut-off of NDCG.

    Raises:
        MetricsError: ``k`` or ``ndcg_k`` is not positive, or no user has a relevant item.
    """
    _check_k(k)
    _check_k(ndcg_k)
    users = [u for u, items in relevant.items() if items]
    if not users:
        raise MetricsError(
            "no user has a relevant item in the hold-out: choose a cut-off with events after it"
        )
    ndcg = [ndcg_at_k(list(ranked.get(u, ())), relevant[u], ndcg_k) for u in users]
    recall = [recall_at_k(list(ranked.get(u, ())), relevant[u], k) for u in users]
    return {
        f"ndcg_at_{ndcg_k}": float(np.mean(ndcg)),
        f"recall_at_{k}": float(np.mean(recall)),
        "users": float(len(users)),
    }


def per_user_metrics(
    ranked: Mapping[str, Sequence[object]],
    relevant: Mapping[str, Collection[object]],
    users: Sequence[str],
    k: int,
    ndcg_k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """NDCG@``ndcg_k`` and Recall@``k`` of each of ``users`` (in that order), for bootstraps.

    A user without a ranked list scores 0; a user without relevant items scores 0 too
    (callers pass users that have some).
    """
    _check_k(k)
    _check_k(ndcg_k)
    ndcg = np.array(
        [ndcg_at_k(list(ranked.get(u, ())), relevant.get(u, ()), ndcg_k) for u in users]
    )
    recall = np.array([recall_at_k(list(ranked.get(u, ())), relevant.get(u, ()), k) for u in users])
    return ndcg, recall


def bootstrap_ratio(
    model: np.ndarray,
    baseline: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(model) / mean(baseline)`` and its percentile interval, resampling users.

    The two arrays hold one value per user, the same users in the same order (a paired
    bootstrap: each resample draws users, with both of their values).

    Returns:
        ``(ratio, low, high)``; ``nan`` where the baseline's mean is 0.

    Raises:
        MetricsError: The arrays differ in length or are empty.
    """
    a = np.asarray(model, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise MetricsError(
            f"a paired bootstrap needs two equal, non-empty 1-D arrays; got {a.shape} and {b.shape}"
        )
    picks = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = a[picks].mean(axis=1) / b[picks].mean(axis=1)
        point = a.mean() / b.mean() if b.mean() > 0 else float("nan")
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) == 0:
        return float(point), float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(point), float(low), float(high)


class PopularityBaseline:
    """Ranks items by how often they were viewed in the training period; the same list for all.

    Example:
        >>> base = PopularityBaseline.fit(["a", "b", "b", "c", "b", "c"])
        >>> base.rank(["u"], k=2, exclude={"u": {"b"}})
        {'u': ['c', 'a']}
    """

    def __init__(self, item_ids: Sequence[str], counts: np.ndarray) -> None:
        order = np.lexsort((np.asarray(item_ids, dtype=object).astype(str), -counts))
        self.item_ids: list[str] = [str(item_ids[i]) for i in order]
        self.counts: np.ndarray = np.asarray(counts, dtype=np.float64)[order]

    @classmethod
    def fit_recent(
        cls, views: pd.DataFrame, until_ts: int, window_days: float
    ) -> PopularityBaseline:
        """Count the views of the last ``window_days`` before ``until_ts`` (ms).

        Args:
            views: Training views with ``item_id`` and ``ts`` (ms).
            until_ts: The end of the training period (the cut-off).
            window_days: The window's length in days.

        Raises:
            MetricsError: No view falls in the window, or ``window_days`` is not positive.
        """
        if window_days <= 0:
            raise MetricsError(f"window_days={window_days}: use a positive number of days")
        since = until_ts - int(window_days * 86_400_000)
        recent = views.loc[(views["ts"] >= since) & (views["ts"] < until_ts), "item_id"]
        if recent.empty:
            raise MetricsError(
                f"no training view in the {window_days:g} days before ts={until_ts}: widen "
                "the recent-popularity window"
            )
        return cls.fit(recent)

    @classmethod
    def fit(cls, viewed_items: Iterable[object]) -> PopularityBaseline:
        """Count the training views (one item id per view event)."""
        values, counts = np.unique(np.asarray([str(v) for v in viewed_items]), return_counts=True)
        if len(values) == 0:
            raise MetricsError("the popularity baseline needs at least one training view")
        return cls([str(v) for v in values], counts.astype(np.float64))

    def rank(
        self,
        user_ids: Iterable[str],
        k: int,
        exclude: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, list[str]]:
        """The ``k`` most viewed items per user, skipping the user's ``exclude`` items."""
        _check_k(k)
        exclude = exclude or {}
        out: dict[str, list[str]] = {}
        for user in user_ids:
            seen = exclude.get(user, ())
            picked: list[str] = []
            for item in self.item_ids:
                if item not in seen:
                    picked.append(item)
                    if len(picked) == k:
                        break
            out[user] = picked
        return out


__all__ = [
    "MetricsError",
    "PopularityBaseline",
    "auc",
    "bootstrap_ratio",
    "dcg_at_k",
    "ndcg_at_k",
    "per_user_metrics",
    "ranking_metrics",
    "recall_at_k",
]
