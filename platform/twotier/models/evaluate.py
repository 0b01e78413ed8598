"""The two tiers together on a temporal hold-out, against two popularity baselines.

For every hold-out user (a user with ``relevant_action`` events at or after the cut-off),
tier one's ONNX graph proposes the ranker's declared candidates (``CandidateSpec``: its
best items plus recent popularity) that the user had not viewed before the cut-off; tier
two's ONNX graph re-ranks them on point-in-time features at the cut-off
(``twotier.features.historical_features``) and tier one's score and rank of each, as
serving does. NDCG@10 and Recall@k of that list are set
against tier one alone, all-time popularity (items by training-period views) and recent
popularity (views of the last ``recent_days`` before the cut-off), each over all users,
the users tier one knows and the cold ones, with 95% bootstrap intervals of the ratio to
each baseline. The returned dict goes to MLflow as is.

The served order is tier two's, as serving ranks. An earlier reciprocal-rank fusion with
tier one's order was measured to cost NDCG and is gone.

Example:
    >>> with open_offline_store(settings) as store:  # doctest: +SKIP
    ...     cutoff = twotier.models.data.temporal_cutoff(store, "movielens")
    ...     metrics = evaluate_two_tiers(store, settings, "movielens", one, two, cutoff)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import pandas as pd

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.models.candidates import tier_one_candidates
from twotier.models.data import items_by_user, read_interactions
from twotier.models.metrics import (
    MetricsError,
    PopularityBaseline,
    bootstrap_ratio,
    per_user_metrics,
    ranking_metrics,
)
from twotier.models.tier_one import TierOneSession
from twotier.models.tier_two import TierTwoSession
from twotier.offline_store.base import OfflineStore

log = logging.getLogger(__name__)


class EvaluationError(TwotierError, ValueError):
    """The hold-out cannot be evaluated as asked; the message names the fix."""


def _with_prefix(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items() if k != "users"}


def _recent(train: pd.DataFrame, cutoff_ts: int, days: float) -> PopularityBaseline:
    """Recent popularity; all-time popularity when the window holds no view (a warning)."""
    try:
        return PopularityBaseline.fit_recent(train, cutoff_ts, days)
    except MetricsError as exc:
        log.warning("%s; the recent-popularity baseline counts every training view", exc)
        return PopularityBaseline.fit(train["item_id"])


BASELINES = ("popularity", "recent_popularity")
SPLITS = {"": "all", "known_": "known", "cold_": "cold"}
"""Metric-name infix → users: all of them, those tier one was trained on, the others."""


def evaluate_two_tiers(
    store: OfflineStore,
    settings: Settings,
    project: str,
    tier_one: onnx.ModelProto | bytes,
    tier_two: onnx.ModelProto | bytes,
    cutoff_ts: int,
    k: int = 100,
    ndcg_k: int = 10,
    relevant_action: str = "smile",
    max_users: int | None = None,
    seed: int = 0,
    recent_days: float = 730.0,
    resamples: int = 1000,
    per_user: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """NDCG@``ndcg_k`` and Recall@``k`` of the two tiers, tier one and both baselines.

    The served order is tier two's order of the declared candidates, as in serving; its
    first ``k`` count for Recall@k. Users tier one never saw get its cold fallback (the
    popularity column of its ONNX graph), re-ranked by tier two unless the ranker's
    candidates say ``rerank_cold: false``, as in serving.

    Args:
        store: An open offline store with events and materialized snapshots.
        settings: The settings of the project.
        project: The project.
        tier_one: The exported tier-one graph (``export_tier_one``).
        tier_two: The exported tier-two graph (``to_onnx``; carries its features spec).
        cutoff_ts: The temporal split (ms) both tiers were trained before.
        k: The Recall cut-off, and tier one's list length when it is ranked alone.
        ndcg_k: The NDCG cut-off.
        relevant_action: Hold-out events of this action make an item relevant.
        max_users: Evaluate a seeded sample of at most this many hold-out users.
        seed: The sample's seed (and the bootstrap's).
        recent_days: The window of the recent-popularity baseline (training views of the
            last ``recent_days`` before the cut-off).
        resamples: Bootstrap resamples (over users) of the intervals.
        per_user: If given, filled with ``{"all" | "known" | "cold": {system: NDCG per
            user}}`` (for bootstraps pooled over several cut-offs).

    Returns:
        ``<system>_[known_|cold_]ndcg_at_<ndcg_k>`` and ``..._recall_at_<k>`` for the
        systems ``two_tier``, ``tier_one``, ``popularity`` and ``recent_popularity``
        (all hold-out users, those tier one was trained on, the others);
        ``two_tier_[known_|cold_]ndcg_ratio_vs_<baseline>`` with ``_ci_low`` and
        ``_ci_high`` (95% paired bootstrap over users; absent for an empty split);
        ``eval_users``, ``eval_known_users``, ``eval_cold_users``,
        ``eval_candidate_rows`` and ``eval_recent_days``.

    Raises:
        EvaluationError: No training views or no hold-out user, or tier two has no spec.
    """
    train = read_interactions(store, project, "view", until_ts=cutoff_ts)
    holdout = read_interactions(store, project, relevant_action, since_ts=cutoff_ts)
    if train.empty or holdout.empty:
        raise EvaluationError(
            f"cut-off ts={cutoff_ts} leaves {len(train)} training views and {len(holdout)} "
            f"hold-out {relevant_action!r} events in project {project!r}: pick a cut-off "
            "inside the events' time range"
        )
    seen = items_by_user(train)
    relevant = {u: items - seen.get(u, set()) for u, items in items_by_user(holdout).items()}
    relevant = {u: items for u, items in relevant.items() if items}
    users = sorted(relevant)
    if max_users is not None and len(users) > max_users:
        picked = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        users = [users[i] for i in sorted(picked)]
    relevant = {u: relevant[u] for u in users}
    if not users:
        raise EvaluationError(
            f"no hold-out user has a new {relevant_action!r} item after ts={cutoff_ts}"
        )

    one = TierOneSession(tier_one)
    candidates = one.candidates(users, k, exclude=seen)
    two = TierTwoSession(tier_two)
    if two.spec is None:
        raise EvaluationError(
            "the tier-two ONNX model carries no model-features spec in its metadata: export "
            "it with twotier.models.tier_two.to_onnx"
        )
    mix = two.spec.model.candidates
    found = tier_one_candidates(one, users, mix, seen)
    names = two.spec.model.candidate_features()
    rows = pd.DataFrame(
        {
            "user_id": [u for u in users for _ in found[u].items],
            "item_id": [i for u in users for i in found[u].items],
            **{
                n: np.concatenate([found[u].request_features([n])[n] for u in users]) for n in names
            },
        }
    )
    rows["ts"] = np.int64(cutoff_ts)
    reranked: dict[str, list[str]] = {u: [] for u in users}
    if not rows.empty:
        from twotier.features.offline import historical_features

        features = historical_features(store, settings, project, two.spec, rows)
        rows["p"] = two.probabilities(features[two.spec.columns()].to_numpy(dtype=np.float32))
        rows["rank_one"] = rows.groupby("user_id", sort=False).cumcount()
        ordered = rows.sort_values(["user_id", "p", "rank_one"], ascending=[True, False, True])
        for user, items in ordered.groupby("user_id", sort=False)["item_id"]:
            reranked[str(user)] = list(items)[:k]
    if not mix.rerank_cold:  # cold users keep tier one's fallback order, as served
        reranked |= {u: found[u].items[:k] for u in users if found[u].cold}

    ranked = {
        "two_tier": reranked,
        "tier_one": candidates,
        "popularity": PopularityBaseline.fit(train["item_id"]).rank(users, k, exclude=seen),
        "recent_popularity": _recent(train, cutoff_ts, recent_days).rank(users, k, exclude=seen),
    }
    known_ids = set(one.user_ids)
    groups = {
        "": users,
        "known_": [u for u in users if u in known_ids],
        "cold_": [u for u in users if u not in known_ids],
    }
    metrics: dict[str, float] = {}
    for infix, members in groups.items():
        if not members:
            continue
        scored = {
            name: per_user_metrics(lists, relevant, members, k, ndcg_k)
            for name, lists in ranked.items()
        }
        if per_user is not None:
            per_user[SPLITS[infix]] = {name: ndcg for name, (ndcg, _) in scored.items()}
        for name, (ndcg, recall) in scored.items():
            metrics[f"{name}_{infix}ndcg_at_{ndcg_k}"] = float(ndcg.mean())
            metrics[f"{name}_{infix}recall_at_{k}"] = float(recall.mean())
        for baseline in BASELINES:
            ratio, low, high = bootstrap_ratio(
                scored["two_tier"][0], scored[baseline][0], resamples, seed=seed
            )
            key = f"two_tier_{infix}ndcg_ratio_vs_{baseline}"
            metrics |= {key: ratio, f"{key}_ci_low": low, f"{key}_ci_high": high}
    metrics |= {
        "eval_users": float(len(users)),
        "eval_known_users": float(len(groups["known_"])),
        "eval_cold_users": float(len(groups["cold_"])),
        "eval_candidate_rows": float(len(rows)),
        "eval_recent_days": float(recent_days),
    }
    log.info(
        "two tiers on %d hold-out users (%d known): NDCG@%d %.4f (popularity %.4f, recent "
        "%.4f), Recall@%d %.4f (%.4f)",
        len(users),
        len(groups["known_"]),
        ndcg_k,
        metrics[f"two_tier_ndcg_at_{ndcg_k}"],
        metrics[f"popularity_ndcg_at_{ndcg_k}"],
        metrics[f"recent_popularity_ndcg_at_{ndcg_k}"],
        k,
        metrics[f"two_tier_recall_at_{k}"],
        metrics[f"popularity_recall_at_{k}"],
    )
    return metrics


def evaluate_tier_one(
    tier_one: onnx.ModelProto | bytes,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    ks: Sequence[int] = (1, 5, 10, 20, 50, 100),
    ndcg_k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Tier one alone against popularity: hold-out items the user had not seen before.

    Args:
        tier_one: The exported tier-one graph.
        train: Training views (``user_id``, ``item_id``).
        holdout: Hold-out interactions; each user's new items are the relevant ones.
        ks: Cut-offs of the Recall@k curve; the largest is the candidate count.
        ndcg_k: The NDCG cut-off.
        max_users: Evaluate a seeded sample of at most this many hold-out users.
        seed: The sample's seed.

    Returns:
        Metrics ``tier_one_ndcg_at_<ndcg_k>``, ``tier_one_recall_at_<max k>``, the same with
        ``popularity_``, ``eval_users``; and the Recall@k curves ``{"tier one": [...],
        "popularity": [...]}`` over ``ks``.

    Raises:
        EvaluationError: No training view, or no hold-out user has a new item.
    """
    from twotier.models.plots import recall_curve

    if train.empty or holdout.empty:
        raise EvaluationError(
            f"{len(train)} training and {len(holdout)} hold-out interactions: tier one needs "
            "both sides of the time split"
        )
    seen = items_by_user(train)
    relevant = {u: items - seen.get(u, set()) for u, items in items_by_user(holdout).items()}
    users = sorted(u for u, items in relevant.items() if items)
    if max_users is not None and len(users) > max_users:
        picked = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        users = [users[i] for i in sorted(picked)]
    if not users:
        raise EvaluationError("no hold-out user has an item they had not seen before the cut-off")
    relevant = {u: relevant[u] for u in users}
    k = max(ks)
    candidates = TierOneSession(tier_one).candidates(users, k, exclude=seen)
    popularity = PopularityBaseline.fit(train["item_id"]).rank(users, k, exclude=seen)
    metrics = {
        **_with_prefix("tier_one", ranking_metrics(candidates, relevant, k, ndcg_k)),
        **_with_prefix("popularity", ranking_metrics(popularity, relevant, k, ndcg_k)),
        "eval_users": float(len(users)),
    }
    curves = {
        "tier one": recall_curve(candidates, relevant, ks),
        "popularity": recall_curve(popularity, relevant, ks),
    }
    return metrics, curves


__all__ = ["EvaluationError", "evaluate_tier_one", "evaluate_two_tiers", "items_by_user"]
