"""Tier two's candidates and the training rows built from them.

A tier-two model ranks what tier one proposes, so it learns from exactly that: at a
*label cut* ``L`` inside the training period, a tier one trained only on the views
before ``L`` proposes candidates (``CandidateSpec``: its best items plus recent
popularity) to every user who later smiles at an item new to them, and each candidate is
a row at time ``L`` labelled 1 if the user did ``label_action`` on it in ``[L, end)``.
Features are point in time at ``L`` (``historical_features``), plus tier one's score and
rank of the candidate as the request features ``tier1_score`` and ``tier1_rank``: the
same numbers serving passes for the same candidate, from the same ONNX graph.

Ranking the candidates of known and cold users this way is what beats popularity on the
hold-out (``bench/quality.py``); training on every view labelled smile-or-not taught the
ranker P(smile | view) instead, which ranks unseen items by quality, not by interest.

Example:
    >>> spec = CandidateSpec(tier_one=2, popular=1)
    >>> merged = merge_candidates(["a", "b", "c"], [0.9, 0.5, 0.1], ["z", "a"], spec)
    >>> merged.items, merged.scores.tolist(), merged.ranks.tolist()
    (['a', 'b', 'z'], [0.9, 0.5, 0.5], [0.0, 1.0, 2.0])
    >>> merged.popular_ranks.tolist()  # "a" is second in popularity; "b" beyond the list
    [1.0, 3.0, 0.0]
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.features.spec import (
    POPULAR_RANK,
    TIER_ONE_RANK,
    TIER_ONE_SCORE,
    CandidateSpec,
    ModelFeatureSpec,
)
from twotier.models.data import items_by_user, read_interactions
from twotier.models.tier_one import (
    TierOneParams,
    TierOneSession,
    export_tier_one,
    train_tier_one,
)
from twotier.offline_store.base import OfflineStore
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)


class CandidateError(TwotierError, ValueError):
    """Candidate training rows cannot be built as asked; the message names the fix."""


@dataclass(frozen=True)
class Candidates:
    """One user's candidates with tier one's score and rank of each (rank 0 = best)."""

    items: list[str]
    scores: np.ndarray
    ranks: np.ndarray
    popular_ranks: np.ndarray
    cold: bool = False

    def request_features(self, names: Collection[str]) -> dict[str, list[float]]:
        """The per-candidate request features among ``names`` (``CANDIDATE_FEATURES``)."""
        values = {
            TIER_ONE_SCORE: self.scores,
            TIER_ONE_RANK: self.ranks,
            POPULAR_RANK: self.popular_ranks,
        }
        return {n: values[n].tolist() for n in names if n in values}


def merge_candidates(
    ranked: Sequence[str],
    scores: Sequence[float],
    popular: Sequence[str],
    spec: CandidateSpec,
    cold: bool = False,
) -> Candidates:
    """Tier one's first ``spec.tier_one`` items, then up to ``spec.popular`` popular ones.

    Args:
        ranked: Tier one's items for the user, best first, seen items already removed.
        scores: Their scores, same order.
        popular: Recent popularity's items, best first, seen items already removed.
        spec: How many of each.
        cold: Tier one never saw the user (``ranked`` is its fallback).

    Returns:
        The candidates; a popular item tier one did not propose gets tier one's last
        score and the rank ``spec.tier_one``, so "beyond tier one's list" is one value;
        an item beyond ``popular``'s list gets the popularity rank ``tier_one + popular``.
    """
    items = list(ranked[: spec.tier_one])
    values = [float(s) for s in scores[: len(items)]]
    ranks = [float(r) for r in range(len(items))]
    floor = values[-1] if values else 0.0
    present = set(items)
    added = 0
    for item in popular:
        if added >= spec.popular:
            break
        if item in present:
            continue
        items.append(item)
        values.append(floor)
        ranks.append(float(spec.tier_one))
        present.add(item)
        added += 1
    beyond = float(spec.tier_one + spec.popular)
    position = {item: float(r) for r, item in enumerate(popular[: spec.tier_one + spec.popular])}
    popular_ranks = [position.get(item, beyond) for item in items]
    return Candidates(items, np.asarray(values), np.asarray(ranks), np.asarray(popular_ranks), cold)


def tier_one_candidates(
    session: TierOneSession,
    user_ids: Sequence[str],
    spec: CandidateSpec,
    exclude: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Candidates]:
    """``merge_candidates`` for many users from one exported tier one.

    Tier one's graph answers both halves: each user's row (ALS scores; the fallback row
    for a user it never saw) and the fallback row itself (recent popularity).

    Args:
        session: The exported tier one.
        user_ids: The users.
        spec: The candidate mix.
        exclude: Per user, items never to propose (those seen before).

    Returns:
        Per user id, its candidates.
    """
    exclude = exclude or {}
    users = list(dict.fromkeys(str(u) for u in user_ids))
    if not users:
        return {}
    extra = max((len(exclude.get(u, ())) for u in users), default=0)
    index = session.user_indices(users)
    # One run answers both: the users' rows, then the fallback row (recent popularity).
    rows = np.append(index, np.int64(session.fallback_index))
    indices, scores = session.run(rows, spec.tier_one + spec.popular + extra)
    popular_row = [session.item_ids[j] for j in indices[-1]]
    out: dict[str, Candidates] = {}
    for user, row, values, i in zip(users, indices[:-1], scores[:-1], index, strict=True):
        seen = exclude.get(user, ())
        kept = [(session.item_ids[j], float(s)) for j, s in zip(row, values, strict=True)]
        kept = [(item, s) for item, s in kept if item not in seen]
        popular = [item for item in popular_row if item not in seen]
        out[user] = merge_candidates(
            [item for item, _ in kept],
            [s for _, s in kept],
            popular,
            spec,
            cold=int(i) == session.fallback_index,
        )
    return out


def label_cuts(ts: np.ndarray | pd.Series, quantiles: Sequence[float]) -> list[int]:
    """The label cuts (ms) at the given quantiles of the training views' times.

    Raises:
        CandidateError: No views, or a quantile outside (0, 1).
    """
    times = np.asarray(ts, dtype=np.int64)
    if times.size == 0:
        raise CandidateError("no training views: load events before the cut-off first")
    bad = [q for q in quantiles if not 0 < q < 1]
    if bad or not quantiles:
        raise CandidateError(
            f"label-cut quantiles {list(quantiles)} must be one or more numbers strictly "
            "between 0 and 1"
        )
    return sorted({int(np.quantile(times, q, method="lower")) for q in quantiles})


def candidate_training_set(
    store: OfflineStore,
    settings: Settings,
    project: str,
    spec: ModelFeatureSpec,
    views: pd.DataFrame,
    cuts: Sequence[int],
    end_ts: int,
    tier_one_params: TierOneParams | None = None,
    label_action: str = "smile",
    progress: Progress = quiet,
) -> pd.DataFrame:
    """Ranker training rows from tier one's candidates at each label cut (module docstring).

    Args:
        store: An open offline store with the project's events and feature snapshots.
        settings: The project's settings.
        project: The project.
        spec: The tier-two model's spec (its ``candidates`` and request features).
        views: Training views (``user_id``, ``item_id``, ``ts``), e.g. tier one's set.
        cuts: Label cuts (ms), each strictly inside ``views``' time range.
        end_ts: Labels are ``label_action`` events in ``[cut, end_ts)``; the model's own
            cut-off, so nothing of its hold-out is used.
        tier_one_params: Settings of the tier one trained at each cut.
        label_action: The action that makes a candidate positive.
        progress: Receives one line per cut.

    Returns:
        ``user_id``, ``item_id``, ``ts`` (the cut), ``spec.columns()``, ``label``; sorted
        by cut, then user and tier one's order; empty if no cut has a positive.

    Raises:
        CandidateError: A cut leaves no view before it, or ``end_ts`` is not after it.
    """
    from twotier.features.offline import historical_features

    names = spec.model.candidate_features()
    frames: list[pd.DataFrame] = []
    for cut in sorted(cuts):
        before = views[views["ts"] < cut]
        if before.empty or cut >= end_ts:
            raise CandidateError(
                f"label cut ts={cut} leaves {len(before)} views before it and ends at "
                f"ts={end_ts}: choose cuts inside the training period"
            )
        session = TierOneSession(export_tier_one(train_tier_one(before, tier_one_params)))
        seen = items_by_user(before)
        later = read_interactions(store, project, label_action, since_ts=cut, until_ts=end_ts)
        positives = {u: items - seen.get(u, set()) for u, items in items_by_user(later).items()}
        users = sorted(u for u, items in positives.items() if items)
        found = tier_one_candidates(session, users, spec.model.candidates, seen)
        frame = pd.DataFrame(
            {
                "user_id": [u for u, c in found.items() for _ in c.items],
                "item_id": [i for c in found.values() for i in c.items],
                "ts": np.int64(cut),
                **{
                    n: np.concatenate([c.request_features([n])[n] for c in found.values()])
                    if found
                    else np.zeros(0)
                    for n in names
                },
                "label": [int(i in positives[u]) for u, c in found.items() for i in c.items],
            }
        )
        frames.append(frame)
        log.info(
            "label cut ts=%d: %d users, %d candidate rows, %.1f%% positive",
            cut,
            len(users),
            len(frame),
            100 * float(frame["label"].mean()) if len(frame) else 0.0,
        )
        progress(
            f"label cut {len(frames)}/{len(cuts)}: {len(users)} users, {len(frame)} candidates"
        )
    entity = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if entity.empty:
        return entity
    return historical_features(store, settings, project, spec, entity, label="label")


def candidate_rows_before(
    store: OfflineStore,
    settings: Settings,
    project: str,
    spec: ModelFeatureSpec,
    cutoff_ts: int,
    quantiles: Sequence[float] = (0.7, 0.8, 0.9),
    tier_one_params: TierOneParams | None = None,
    label_action: str = "smile",
    progress: Progress = quiet,
) -> tuple[pd.DataFrame, int]:
    """``candidate_training_set`` at label cuts (``quantiles``) of the views before a cut-off.

    Returns:
        The rows, and the last cut: rows at it are the hold-out of AUC and parity.

    Raises:
        CandidateError: No views before ``cutoff_ts``, or fewer than two distinct cuts.
    """
    views = read_interactions(store, project, "view", until_ts=cutoff_ts)
    if views.empty:
        raise CandidateError(
            f"project {project!r} has no view before ts={cutoff_ts} in the offline store: "
            "load events and materialize snapshots first"
        )
    cuts = label_cuts(views["ts"], quantiles)
    if len(cuts) < 2:
        raise CandidateError(
            f"label cuts at quantiles {list(quantiles)} give {len(cuts)} distinct time(s): "
            "give at least two (the last one's rows are the hold-out)"
        )
    rows = candidate_training_set(
        store,
        settings,
        project,
        spec,
        views,
        cuts,
        cutoff_ts,
        tier_one_params,
        label_action=label_action,
        progress=progress,
    )
    return rows, cuts[-1]


__all__ = [
    "CandidateError",
    "Candidates",
    "candidate_rows_before",
    "candidate_training_set",
    "label_cuts",
    "merge_candidates",
    "tier_one_candidates",
]
