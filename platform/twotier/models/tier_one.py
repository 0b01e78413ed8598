"""Tier one: implicit-feedback matrix factorisation over the whole catalogue, exported to ONNX.

The model is implicit ALS (Hu, Koren and Volinsky 2008): every view is a positive with
confidence ``1 + alpha * views``, every other item a weak negative. It is trained in numpy,
seeded and single-threaded in spirit (a few small solves per entity).

The exported ONNX graph computes the candidates itself::

    user_index int64 [N] ─ Gather(user_factors) ─ MatMul(item_factors_t) ─ TopK(k) ─► scores  [N, k]
                                                                                  └─► indices [N, k]

``k`` is an optional int64 [1] input whose default (an initializer) is the trained
``top_k``; ``indices`` point into the item vocabulary stored in the model's
``metadata_props`` (``item_ids``, JSON), and ``user_ids`` maps user ids to rows. The last
row of ``user_factors`` (``fallback_user_index``, also reachable as ``-1``) is the
popularity fallback for users the model never saw: every factor is 0 except one extra
column whose item side holds the normalised popularity of the training views of the
last ``TierOneParams.fallback_window_days``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from twotier.errors import TwotierError
from twotier.models.parity import PARITY_TOLERANCE, check_parity

log = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_IR_VERSION = 8
USER_INPUT = "user_index"
K_INPUT = "k"
SCORES_OUTPUT = "scores"
INDICES_OUTPUT = "indices"
META_ITEM_IDS = "item_ids"
META_USER_IDS = "user_ids"
META_TOP_K = "top_k"
META_FALLBACK = "fallback_user_index"
META_KIND = "twotier_model"


class TierOneError(TwotierError, ValueError):
    """Tier one cannot be trained or served as asked; the message names the fix."""


class TierOneParams(BaseModel):
    """Implicit ALS settings: small and fast on MovieLens small."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factors: int = Field(16, ge=1, le=512)
    iterations: int = Field(8, ge=1, le=100)
    regularization: float = Field(1.0, gt=0)
    alpha: float = Field(5.0, gt=0)
    """Confidence of an observed view: ``1 + alpha * count``."""
    top_k: int = Field(100, ge=1)
    """The default candidate count the ONNX graph returns."""
    fallback_window_days: float | None = Field(730.0, gt=0)
    """Cold users' fallback: popularity over the views of this many days before the last
    training view (None: all of them). Needs a ``ts`` column (ms); without one, all views."""
    seed: int = 0


@dataclass
class TierOneModel:
    """Trained factors with the id vocabularies; the native side of the parity gate.

    Attributes:
        user_ids: The known users; row ``i`` of ``user_factors`` is ``user_ids[i]``.
        item_ids: The catalogue; column ``j`` of the scores is ``item_ids[j]``.
        user_factors: float32 ``[len(user_ids) + 1, factors + 1]``; the last row is the
            popularity fallback.
        item_factors: float32 ``[len(item_ids), factors + 1]``; the last column is the
            normalised training popularity.
        params: The training parameters.
    """

    user_ids: list[str]
    item_ids: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    params: TierOneParams
    _user_rows: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._user_rows = {u: i for i, u in enumerate(self.user_ids)}

    @property
    def fallback_index(self) -> int:
        """The row of the popularity fallback (unknown users)."""
        return len(self.user_ids)

    def user_indices(self, user_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``user_ids`` in ``user_factors``; unknown users get ``fallback_index``."""
        fallback = self.fallback_index
        return np.fromiter(
            (self._user_rows.get(str(u), fallback) for u in user_ids),
            dtype=np.int64,
            count=len(user_ids),
        )

    def scores(self, user_index: np.ndarray) -> np.ndarray:
        """float32 scores ``[N, len(item_ids)]`` of the users at ``user_index``."""
        rows = self.user_factors[np.asarray(user_index, dtype=np.int64)]
        return np.asarray(rows @ self.item_factors.T, dtype=np.float32)

    def top_k(self, user_index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best item indices per user and their scores, best first."""
        scores = self.scores(user_index)
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


def _vocabulary(values: pd.Series) -> tuple[list[str], np.ndarray]:
    codes, uniques = pd.factorize(values.astype(str), sort=True)
    return [str(u) for u in uniques], codes.astype(np.int64)


def _als_half(
    fixed: np.ndarray, confidence: sparse.csr_matrix, regularization: float
) -> np.ndarray:
    """Solve every row of one side given the other side's factors (one ALS half-step)."""
    f = fixed.shape[1]
    gram = fixed.T @ fixed + regularization * np.eye(f)
    out = np.zeros((confidence.shape[0], f))
    indptr, indices, data = confidence.indptr, confidence.indices, confidence.data
    for row in range(confidence.shape[0]):
        start, end = indptr[row], indptr[row + 1]
        if start == end:
            continue
        y = fixed[indices[start:end]]
        c = data[start:end]
        a = gram + (y.T * (c - 1.0)) @ y
        out[row] = np.linalg.solve(a, y.T @ c)
    return out


def _fallback_popularity(
    interactions: pd.DataFrame, items: np.ndarray, n_items: int, params: TierOneParams
) -> np.ndarray:
    """The cold users' scores: log views per item (recent ones if configured), max 1."""
    recent = np.ones(len(items), dtype=bool)
    if params.fallback_window_days is not None and "ts" in interactions.columns:
        ts = interactions["ts"].to_numpy(dtype=np.int64)
        recent = ts >= ts.max() - int(params.fallback_window_days * 86_400_000)
    views = np.bincount(items[recent], minlength=n_items).astype(np.float64)
    views += 1e-3 * np.bincount(items, minlength=n_items)  # older views break ties
    popularity = np.log1p(views)
    return popularity / popularity.max()


def train_tier_one(interactions: pd.DataFrame, params: TierOneParams | None = None) -> TierOneModel:
    """Fit implicit ALS on training interactions (one row per view before the cut-off).

    Args:
        interactions: Columns ``user_id`` and ``item_id``; repeated pairs add confidence;
            ``ts`` (ms), if present, dates the views for the cold users' fallback.
        params: ALS settings (defaults are small and fast).

    Returns:
        The factors, with the popularity fallback row and column appended (popularity of
        the last ``params.fallback_window_days``).

    Raises:
        TierOneError: No interactions, or columns are missing.
    """
    params = params or TierOneParams()
    missing = {"user_id", "item_id"} - set(interactions.columns)
    if missing:
        raise TierOneError(
            f"interactions lack columns {sorted(missing)}; they need user_id and item_id "
            f"(one row per view); got {list(interactions.columns)}"
        )
    if interactions.empty:
        raise TierOneError(
            "no training interactions: load view events before the cut-off into the offline store"
        )
    user_ids, users = _vocabulary(interactions["user_id"])
    item_ids, items = _vocabulary(interactions["item_id"])
    counts = sparse.csr_matrix(
        (np.ones(len(users)), (users, items)), shape=(len(user_ids), len(item_ids))
    )
    counts.sum_duplicates()
    confidence = counts.copy()
    confidence.data = 1.0 + params.alpha * confidence.data
    confidence_t = confidence.T.tocsr()

    rng = np.random.default_rng(params.seed)
    user_f = rng.normal(0.0, 0.01, (len(user_ids), params.factors))
    item_f = rng.normal(0.0, 0.01, (len(item_ids), params.factors))
    for _ in range(params.iterations):
        user_f = _als_half(item_f, confidence, params.regularization)
        item_f = _als_half(user_f, confidence_t, params.regularization)

    popularity = _fallback_popularity(interactions, items, len(item_ids), params)
    user_full = np.zeros((len(user_ids) + 1, params.factors + 1), dtype=np.float32)
    user_full[:-1, :-1] = user_f
    user_full[-1, -1] = 1.0
    item_full = np.zeros((len(item_ids), params.factors + 1), dtype=np.float32)
    item_full[:, :-1] = item_f
    item_full[:, -1] = popularity
    log.info(
        "tier one: implicit ALS on %d views of %d users x %d items (%d factors, %d iterations)",
        len(interactions),
        len(user_ids),
        len(item_ids),
        params.factors,
        params.iterations,
    )
    return TierOneModel(user_ids, item_ids, user_full, item_full, params)


# -- ONNX -----------------------------------------------------------------------------


def export_tier_one(model: TierOneModel, top_k: int | None = None) -> onnx.ModelProto:
    """The ONNX graph returning the top-k item indices and scores of each ``user_index``.

    Args:
        model: The trained model.
        top_k: The default ``k`` (an overridable input); ``model.params.top_k`` if None.

    Raises:
        TierOneError: ``top_k`` is not in ``[1, len(item_ids)]``.
    """
    k = model.params.top_k if top_k is None else top_k
    k = min(k, len(model.item_ids))
    if k < 1:
        raise TierOneError(f"top_k={top_k} must be at least 1")
    n_items = len(model.item_ids)
    user_factors = numpy_helper.from_array(model.user_factors.astype(np.float32), "user_factors")
    item_factors_t = numpy_helper.from_array(
        np.ascontiguousarray(model.item_factors.T.astype(np.float32)), "item_factors_t"
    )
    k_default = numpy_helper.from_array(np.array([k], dtype=np.int64), K_INPUT)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gather", ["user_factors", USER_INPUT], ["user_vectors"], axis=0),
            helper.make_node("MatMul", ["user_vectors", "item_factors_t"], ["all_scores"]),
            helper.make_node(
                "TopK",
                ["all_scores", K_INPUT],
                [SCORES_OUTPUT, INDICES_OUTPUT],
                axis=-1,
                largest=1,
                sorted=1,
            ),
        ],
        name="tier_one_candidates",
        inputs=[
            helper.make_tensor_value_info(USER_INPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(K_INPUT, TensorProto.INT64, [1]),
        ],
        outputs=[
            helper.make_tensor_value_info(SCORES_OUTPUT, TensorProto.FLOAT, ["N", "K"]),
            helper.make_tensor_value_info(INDICES_OUTPUT, TensorProto.INT64, ["N", "K"]),
        ],
        initializer=[user_factors, item_factors_t, k_default],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="twotier",
        doc_string=f"tier one: implicit ALS top-{k} of {n_items} items",
    )
    onnx_model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(
        onnx_model,
        {
            META_KIND: "tier1",
            META_ITEM_IDS: json.dumps(model.item_ids),
            META_USER_IDS: json.dumps(model.user_ids),
            META_TOP_K: str(k),
            META_FALLBACK: str(model.fallback_index),
            "params": model.params.model_dump_json(),
        },
    )
    onnx.checker.check_model(onnx_model)
    return onnx_model


class TierOneSession:
    """Serves an exported tier one: user ids in, candidate item ids and scores out.

    Example:
        >>> session = TierOneSession(onnx_model)  # doctest: +SKIP
        >>> session.candidates(["1", "stranger"], k=10, exclude={"1": {"31"}})
    """

    def __init__(self, onnx_model: onnx.ModelProto | bytes) -> None:
        import onnxruntime as ort

        proto = (
            onnx_model
            if isinstance(onnx_model, onnx.ModelProto)
            else onnx.load_from_string(onnx_model)
        )
        meta = {p.key: p.value for p in proto.metadata_props}
        if meta.get(META_KIND) != "tier1":
            raise TierOneError(
                f"the ONNX model is not a twotier tier-one model (metadata {META_KIND}="
                f"{meta.get(META_KIND)!r}); export it with export_tier_one"
            )
        self.item_ids: list[str] = json.loads(meta[META_ITEM_IDS])
        self.user_ids: list[str] = json.loads(meta[META_USER_IDS])
        self.top_k = int(meta[META_TOP_K])
        self.fallback_index = int(meta[META_FALLBACK])
        self._user_rows = {u: i for i, u in enumerate(self.user_ids)}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the overridable ``k`` initializer warns otherwise
        self._session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def user_indices(self, user_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``user_ids``; unknown users get the popularity fallback row."""
        return np.fromiter(
            (self._user_rows.get(str(u), self.fallback_index) for u in user_ids),
            dtype=np.int64,
            count=len(user_ids),
        )

    def run(self, user_index: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item indices ``[N, k]`` (int64) and scores ``[N, k]`` (float32), best first."""
        feeds: dict[str, Any] = {USER_INPUT: np.asarray(user_index, dtype=np.int64)}
        if k is not None:
            if k < 1:
                raise TierOneError(f"k={k} must be at least 1")
            feeds[K_INPUT] = np.array([min(k, len(self.item_ids))], dtype=np.int64)
        scores, indices = self._session.run([SCORES_OUTPUT, INDICES_OUTPUT], feeds)
        return np.asarray(indices), np.asarray(scores)

    def candidates(
        self,
        user_ids: Sequence[str],
        k: int | None = None,
        exclude: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, list[str]]:
        """The ``k`` best item ids per user, skipping each user's ``exclude`` items (seen)."""
        k = self.top_k if k is None else k
        exclude = exclude or {}
        extra = max((len(exclude.get(u, ())) for u in user_ids), default=0)
        indices, _ = self.run(self.user_indices(user_ids), k + extra)
        out: dict[str, list[str]] = {}
        for user, row in zip(user_ids, indices, strict=True):
            seen = exclude.get(user, ())
            items = [self.item_ids[j] for j in row]
            out[user] = [i for i in items if i not in seen][:k]
        return out


def check_tier_one_parity(
    model: TierOneModel,
    onnx_model: onnx.ModelProto | bytes,
    user_ids: Sequence[str],
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Compare the ONNX top-k with numpy on ``user_ids`` (e.g. the hold-out users).

    Both the ONNX scores against numpy's scores of the same items, and against numpy's own
    top-k scores, must agree within ``tolerance`` (ties may pick different items).

    Returns:
        The largest absolute difference seen.

    Raises:
        ParityError: The graph disagrees with numpy; registration must be refused.
    """
    session = TierOneSession(onnx_model)
    index = model.user_indices(user_ids)
    indices, scores = session.run(index)
    native_all = model.scores(index)
    at_onnx = np.take_along_axis(native_all, np.clip(indices, 0, native_all.shape[1] - 1), axis=1)
    _, native_top = model.top_k(index, indices.shape[1])
    gap = check_parity("tier one scores at the ONNX top-k", at_onnx, scores, tolerance)
    return max(gap, check_parity("tier one top-k scores", native_top, scores, tolerance))


__all__ = [
    "TierOneError",
    "TierOneModel",
    "TierOneParams",
    "TierOneSession",
    "check_tier_one_parity",
    "export_tier_one",
    "train_tier_one",
]
