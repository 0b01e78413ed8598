"""The skeleton tier-two trainer: point-in-time features from the offline store, XGBoost, ONNX.

For every ``view`` event the training row holds the user's and the item's counters
from events strictly before it (earlier timestamps only, so ties never leak), and the
label says whether the user smiled at the item. Rows are split by time, the model is
converted to ONNX and checked against the native model before anything is returned.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import onnx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from twotier.errors import TwotierError
from twotier.offline_store.base import OfflineStore

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = (
    "user_views",
    "user_smiles",
    "user_smile_rate",
    "user_mean_value",
    "item_views",
    "item_smiles",
    "item_smile_rate",
    "item_mean_value",
)
"""The ranker's input columns, in order; counters are raw, rates derived from them."""

ONNX_INPUT = "features"
ONNX_OPSET = 15
"""The main-domain opset of the export: onnxmltools' XGBoost converter supports up to 15."""

PARITY_TOLERANCE = 1e-4

TRAINING_SET_SQL = """
SELECT
    f.event_id AS event_id,
    f.user_id AS user_id,
    f.item_id AS item_id,
    f.ts AS ts,
    f.user_views AS user_views,
    f.user_smiles AS user_smiles,
    if(f.user_views > 0, f.user_smiles / f.user_views, 0) AS user_smile_rate,
    if(f.user_views > 0, f.user_value_sum / f.user_views, 0) AS user_mean_value,
    f.item_views AS item_views,
    f.item_smiles AS item_smiles,
    if(f.item_views > 0, f.item_smiles / f.item_views, 0) AS item_smile_rate,
    if(f.item_views > 0, f.item_value_sum / f.item_views, 0) AS item_mean_value,
    toUInt8(s.smiled) AS label
FROM
(
    SELECT
        event_id, user_id, item_id, action, ts,
        countIf(action = 'view') OVER before_user AS user_views,
        countIf(action = 'smile') OVER before_user AS user_smiles,
        sumIf(value, action = 'view') OVER before_user AS user_value_sum,
        countIf(action = 'view') OVER before_item AS item_views,
        countIf(action = 'smile') OVER before_item AS item_smiles,
        sumIf(value, action = 'view') OVER before_item AS item_value_sum
    FROM {events} FINAL
    WINDOW
        before_user AS (PARTITION BY user_id ORDER BY ts
                        RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
        before_item AS (PARTITION BY item_id ORDER BY ts
                        RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
) AS f
LEFT JOIN
(
    SELECT user_id, item_id, 1 AS smiled
    FROM {events} FINAL
    WHERE action = 'smile'
    GROUP BY user_id, item_id
) AS s ON f.user_id = s.user_id AND f.item_id = s.item_id
WHERE f.action = 'view'
ORDER BY ts, event_id
"""
"""Point-in-time training rows; ``ts`` is in ms, so ``1 PRECEDING`` means strictly earlier."""


class TrainingError(TwotierError):
    """The data cannot train a model, or the exported model disagrees with the native one."""


class RankerParams(BaseModel):
    """XGBoost settings of the skeleton ranker: small and single-threaded on purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(40, ge=1, le=2000)
    max_depth: int = Field(4, ge=1, le=12)
    learning_rate: float = Field(0.2, gt=0, le=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """The latest share of view events (by time) kept for evaluation."""
    random_state: int = 0


class TrainedModel(NamedTuple):
    """A parity-checked ONNX ranker and what to register with it.

    Attributes:
        onnx_model: The converted graph (input ``features`` [N, F] float32, output
            ``probabilities`` [N, 2]).
        feature_names: The input columns in order.
        metrics: ``auc`` on the hold-out, row counts, positive rate, parity gap.
        params: The training parameters, flat, for MLflow.
        holdout: The hold-out rows: ids, ``ts``, features, ``label`` and the ONNX
            positive-class ``probability``.
    """

    onnx_model: onnx.ModelProto
    feature_names: list[str]
    metrics: dict[str, float]
    params: dict[str, Any]
    holdout: pd.DataFrame


def build_training_set(store: OfflineStore, project: str) -> pd.DataFrame:
    """One row per ``view`` event: point-in-time features and the smile label.

    Args:
        store: The offline store holding the project's events.
        project: The project.

    Returns:
        Columns ``event_id, user_id, item_id, ts``, then ``FEATURE_NAMES``, then
        ``label`` (1 when the user smiled at the item), sorted by time.
    """
    sql = TRAINING_SET_SQL.format(events=store.table(project, "events"))
    frame = store.query_df(sql)
    if frame.empty:  # an empty result carries no columns
        columns = ["event_id", "user_id", "item_id", "ts", *FEATURE_NAMES, "label"]
        return pd.DataFrame(columns=columns)
    for name in FEATURE_NAMES:
        frame[name] = frame[name].astype("float32")
    frame["label"] = frame["label"].astype("int64")
    return frame


def temporal_split(frame: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows by time: the hold-out starts at the ``1 - test_fraction`` quantile of ``ts``.

    Raises:
        TrainingError: Either side would be empty (too few distinct timestamps).
    """
    cutoff = frame["ts"].quantile(1 - test_fraction, interpolation="lower")
    train = frame[frame["ts"] < cutoff]
    test = frame[frame["ts"] >= cutoff]
    if train.empty or test.empty:
        raise TrainingError(
            f"cannot split {len(frame)} training rows by time at ts={cutoff}: one side is "
            "empty; load events spanning more time into the offline store"
        )
    return train, test


def _check_labels(part: str, labels: pd.Series) -> None:
    if labels.nunique() < 2:
        only = sorted(int(v) for v in labels.unique())
        raise TrainingError(
            f"the {part} set has only label {only} "
            f"in {len(labels)} rows; the ranker needs smiles and non-smiles on both sides of "
            "the time split: load more events or change test_fraction"
        )


def to_onnx(model: Any, n_features: int) -> onnx.ModelProto:
    """Convert a fitted ``XGBClassifier`` to ONNX with one float32 ``[N, n_features]`` input."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model: onnx.ModelProto = onnxmltools.convert_xgboost(
        model,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
        target_opset=ONNX_OPSET,
    )
    return onnx_model


def onnx_probabilities(onnx_model: onnx.ModelProto | bytes, matrix: np.ndarray) -> np.ndarray:
    """Positive-class probabilities of an exported binary classifier, via onnxruntime."""
    import onnxruntime as ort

    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(
        ["probabilities"], {ONNX_INPUT: np.asarray(matrix, dtype=np.float32)}
    )
    return np.asarray(probabilities)[:, 1]


def train_ranker(
    store: OfflineStore, project: str, params: RankerParams | None = None
) -> TrainedModel:
    """Train, export and parity-check the skeleton ranker on the project's events.

    Args:
        store: The offline store holding the project's events.
        project: The project.
        params: XGBoost and split settings (defaults are small and fast).

    Returns:
        The ONNX model, its feature names, hold-out metrics and the parameters.

    Raises:
        TrainingError: Too little data (empty split or a single label), or the ONNX
            probabilities differ from XGBoost's by more than ``PARITY_TOLERANCE``.
    """
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    params = params or RankerParams()
    frame = build_training_set(store, project)
    if frame.empty:
        raise TrainingError(
            f"project {project!r} has no view events in {store.table(project, 'events')}: "
            "load events first (the events_offline asset)"
        )
    train, test = temporal_split(frame, params.test_fraction)
    _check_labels("training", train["label"])
    _check_labels("hold-out", test["label"])
    features = list(FEATURE_NAMES)
    x_train = train[features].to_numpy(dtype=np.float32)
    x_test = test[features].to_numpy(dtype=np.float32)

    model = xgb.XGBClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        random_state=params.random_state,
        n_jobs=1,
        tree_method="hist",
        eval_metric="auc",
    )
    model.fit(x_train, train["label"].to_numpy())
    native = model.predict_proba(x_test)[:, 1]

    onnx_model = to_onnx(model, len(features))
    exported = onnx_probabilities(onnx_model, x_test)
    gap = float(np.max(np.abs(exported - native)))
    if gap > PARITY_TOLERANCE:
        raise TrainingError(
            f"ONNX export of the {project} ranker disagrees with XGBoost by {gap:.2e} "
            f"(> {PARITY_TOLERANCE:g}) on {len(x_test)} hold-out rows: check the "
            "onnxmltools / xgboost versions before registering"
        )
    auc = float(roc_auc_score(test["label"], exported))
    metrics = {
        "auc": auc,
        "train_rows": float(len(train)),
        "test_rows": float(len(test)),
        "positive_rate": float(frame["label"].mean()),
        "parity_max_abs_diff": gap,
    }
    holdout = test.loc[:, ["event_id", "user_id", "item_id", "ts", *features, "label"]].copy()
    holdout["probability"] = exported
    log.info(
        "trained %s ranker on %d rows: hold-out AUC %.4f on %d rows, parity gap %.1e",
        project,
        len(train),
        auc,
        len(test),
        gap,
    )
    return TrainedModel(
        onnx_model=onnx_model,
        feature_names=features,
        metrics=metrics,
        params={
            **params.model_dump(),
            "model": "xgboost.XGBClassifier",
            "tree_method": "hist",
            "onnx_opset": ONNX_OPSET,
        },
        holdout=holdout.reset_index(drop=True),
    )
