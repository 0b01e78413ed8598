"""The two tiers together on a temporal hold-out, against the popularity baseline.

For every hold-out user (a user with ``relevant_action`` events at or after the cut-off),
tier one's ONNX graph proposes ``k`` candidates the user had not viewed before the
cut-off; tier two's ONNX graph re-ranks them on point-in-time features at the cut-off
(``twotier.features.historical_features``). NDCG@10 and Recall@k of that list are set
against the same metrics of the popularity baseline (items by training-period views) and
of tier one alone. The returned dict goes to MLflow as is.

Example:
    >>> with open_offline_store(settings) as store:  # doctest: +SKIP
    ...     cutoff = twotier.models.data.temporal_cutoff(store, "movielens")
    ...     metrics = evaluate_two_tiers(store, settings, "movielens", one, two, cutoff)
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import numpy as np
import onnx
import pandas as pd

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.models.data import read_interactions
from twotier.models.metrics import PopularityBaseline, ranking_metrics
from twotier.models.tier_one import TierOneSession
from twotier.models.tier_two import TierTwoSession
from twotier.offline_store.base import OfflineStore

log = logging.getLogger(__name__)


class EvaluationError(TwotierError, ValueError):
    """The hold-out cannot be evaluated as asked; the message names the fix."""


def _by_user(frame: pd.DataFrame) -> dict[str, set[str]]:
    return {str(u): set(items) for u, items in frame.groupby("user_id")["item_id"]}


def _with_prefix(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items() if k != "users"}


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
    fusion_k: float = 60.0,
) -> dict[str, float]:
    """NDCG@``ndcg_k`` and Recall@``k`` of the two tiers, tier one alone and popularity.

    Args:
        store: An open offline store with events and materialized snapshots.
        settings: The settings of the project.
        project: The project.
        tier_one: The exported tier-one graph (``export_tier_one``).
        tier_two: The exported tier-two graph (``to_onnx``; carries its features spec).
        cutoff_ts: The temporal split (ms) both tiers were trained before.
        k: Candidates per user from tier one (the Recall cut-off).
        ndcg_k: The NDCG cut-off.
        relevant_action: Hold-out events of this action make an item relevant.
        max_users: Evaluate a seeded sample of at most this many hold-out users.
        seed: The sample's seed.
        fusion_k: The constant of reciprocal-rank fusion (``1 / (fusion_k + rank)``).

    The served order (``two_tier_``) fuses tier one's and tier two's ranks of the candidates
    (reciprocal-rank fusion): tier two predicts a smile *given* a view, tier one how likely
    the view is, and either order alone under-uses the other. The pure tier-two order is
    reported as ``tier_two_order_``.

    Returns:
        ``two_tier_ndcg_at_<ndcg_k>``, ``two_tier_recall_at_<k>``, the same with the
        prefixes ``tier_two_order_``, ``tier_one_`` and ``popularity_``, ``eval_users``,
        ``eval_known_users`` (users tier one was trained on) and ``eval_candidate_rows``.

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
    seen = _by_user(train)
    relevant = {u: items - seen.get(u, set()) for u, items in _by_user(holdout).items()}
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
    rows = pd.DataFrame(
        [(u, item) for u in users for item in candidates[u]], columns=["user_id", "item_id"]
    )
    rows["ts"] = np.int64(cutoff_ts)
    reranked: dict[str, list[str]] = {u: [] for u in users}
    fused: dict[str, list[str]] = {u: [] for u in users}
    if not rows.empty:
        from twotier.features.offline import historical_features

        features = historical_features(store, settings, project, two.spec, rows)
        rows["p"] = two.probabilities(features[two.spec.columns()].to_numpy(dtype=np.float32))
        rows["rank_one"] = rows.groupby("user_id", sort=False).cumcount()
        rows["rank_two"] = (
            rows.groupby("user_id", sort=False)["p"].rank(ascending=False, method="first") - 1
        )
        rows["fused"] = 1.0 / (fusion_k + rows["rank_one"]) + 1.0 / (fusion_k + rows["rank_two"])
        for target, column in ((reranked, "rank_two"), (fused, "fused")):
            ascending = column == "rank_two"
            ordered = rows.sort_values(
                ["user_id", column, "rank_one"], ascending=[True, ascending, True]
            )
            for user, items in ordered.groupby("user_id", sort=False)["item_id"]:
                target[str(user)] = list(items)

    popularity = PopularityBaseline.fit(train["item_id"]).rank(users, k, exclude=seen)
    known: Collection[str] = set(one.user_ids)
    metrics = {
        **_with_prefix("two_tier", ranking_metrics(fused, relevant, k, ndcg_k)),
        **_with_prefix("tier_two_order", ranking_metrics(reranked, relevant, k, ndcg_k)),
        **_with_prefix("tier_one", ranking_metrics(candidates, relevant, k, ndcg_k)),
        **_with_prefix("popularity", ranking_metrics(popularity, relevant, k, ndcg_k)),
        "eval_users": float(len(users)),
        "eval_known_users": float(sum(u in known for u in users)),
        "eval_candidate_rows": float(len(rows)),
    }
    log.info(
        "two tiers on %d hold-out users: NDCG@%d %.4f (popularity %.4f), Recall@%d %.4f (%.4f)",
        len(users),
        ndcg_k,
        metrics[f"two_tier_ndcg_at_{ndcg_k}"],
        metrics[f"popularity_ndcg_at_{ndcg_k}"],
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
    seen = _by_user(train)
    relevant = {u: items - seen.get(u, set()) for u, items in _by_user(holdout).items()}
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


__all__ = ["EvaluationError", "evaluate_tier_one", "evaluate_two_tiers"]
