"""Tier two: an XGBoost ranker on a model-features vector, converted with onnxmltools.

Training rows come from ``twotier.features.training_set`` (point in time: every feature
strictly before the row's own view) and are split by time at a cut-off: rows before it
train, rows at or after it are the hold-out for AUC and the parity gate. The exported
graph takes ``features`` float32 ``[N, F]`` in ``spec.columns()`` order and returns
``probabilities`` ``[N, 2]``; the model-features spec travels in its ``metadata_props``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.features.spec import ModelFeatureSpec
from twotier.models.metrics import auc
from twotier.models.parity import PARITY_TOLERANCE, check_parity
from twotier.models.tier_one import TierOneParams
from twotier.offline_store.base import OfflineStore
from twotier.progress import Progress, quiet

log = logging.getLogger(__name__)

ONNX_INPUT = "features"
ONNX_OUTPUT = "probabilities"
ONNX_OPSET = 15
"""The main-domain opset: onnxmltools' XGBoost converter supports up to 15."""
META_KIND = "twotier_model"
META_SPEC = "model_features_spec"
META_COLUMNS = "feature_columns"


class TierTwoError(TwotierError, ValueError):
    """Tier two cannot be trained as asked; the message names the fix."""


class TierTwoParams(BaseModel):
    """XGBoost settings of the ranker: small and single-threaded on purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(60, ge=1, le=2000)
    max_depth: int = Field(4, ge=1, le=12)
    learning_rate: float = Field(0.15, gt=0, le=1)
    label_action: str = "smile"
    """The action that makes a view a positive example."""
    random_state: int = 0


@dataclass
class TierTwoModel:
    """A parity-checked ONNX ranker and what to register with it.

    Attributes:
        onnx_model: Input ``features`` float32 ``[N, F]``, output ``probabilities`` [N, 2].
        spec: The model-features spec (the input layout).
        native: The fitted ``xgboost.XGBClassifier``.
        metrics: ``auc`` on the hold-out, row counts, positive rate, ``parity_max_abs_diff``.
        params: Flat training parameters for MLflow.
    """

    onnx_model: onnx.ModelProto
    spec: ModelFeatureSpec
    native: Any
    metrics: dict[str, float]
    params: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        """The input columns in order."""
        return self.spec.columns()


def to_onnx(model: Any, spec: ModelFeatureSpec) -> onnx.ModelProto:
    """Convert a fitted ``XGBClassifier`` to ONNX; the spec goes into ``metadata_props``."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    columns = spec.columns()
    onnx_model: onnx.ModelProto = onnxmltools.convert_xgboost(
        model,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, len(columns)]))],
        target_opset=ONNX_OPSET,
    )
    onnx.helper.set_model_props(
        onnx_model,
        {META_KIND: "tier2", META_SPEC: spec.to_json(), META_COLUMNS: json.dumps(columns)},
    )
    return onnx_model


class TierTwoSession:
    """Scores feature matrices with an exported ranker (onnxruntime, one thread)."""

    def __init__(self, onnx_model: onnx.ModelProto | bytes) -> None:
        import onnxruntime as ort

        data = onnx_model
        if isinstance(onnx_model, onnx.ModelProto):
            data = onnx_model.SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        meta = self._session.get_modelmeta().custom_metadata_map
        self.spec: ModelFeatureSpec | None = (
            ModelFeatureSpec.from_json(meta[META_SPEC]) if META_SPEC in meta else None
        )
        self.n_features = int(self._session.get_inputs()[0].shape[1])

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """Positive-class probabilities of the rows of ``matrix`` ``[N, F]``."""
        x = np.asarray(matrix, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise TierTwoError(
                f"feature matrix has shape {x.shape}; the ranker takes [N, {self.n_features}] "
                "in the order of its model-features spec"
            )
        (probabilities,) = self._session.run([ONNX_OUTPUT], {ONNX_INPUT: x})
        return np.asarray(probabilities)[:, 1]


def _check_labels(part: str, labels: pd.Series, cutoff_ts: int) -> None:
    if labels.nunique() < 2:
        raise TierTwoError(
            f"the {part} rows (cut-off ts={cutoff_ts}) hold only label(s) "
            f"{sorted(int(v) for v in labels.unique())} in {len(labels)} rows: the ranker needs "
            "positives and negatives on both sides; load more events or move the cut-off"
        )


def train_tier_two_frame(
    rows: pd.DataFrame,
    spec: ModelFeatureSpec,
    cutoff_ts: int,
    params: TierTwoParams | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> TierTwoModel:
    """Train, export and parity-check the ranker on a training-set frame.

    Args:
        rows: ``training_set`` output: ``ts``, ``spec.columns()`` and ``label``.
        spec: The model-features spec of the rows.
        cutoff_ts: Rows with ``ts < cutoff_ts`` train; the rest are the hold-out.
        params: XGBoost settings.
        tolerance: The parity gate's largest allowed gap.

    Raises:
        TierTwoError: A column is missing or a side of the split is empty or one-label.
        ParityError: ONNX and XGBoost disagree on the hold-out: do not register.
    """
    import xgboost as xgb

    params = params or TierTwoParams()
    columns = spec.columns()
    missing = [c for c in ["ts", *columns, "label"] if c not in rows.columns]
    if missing:
        raise TierTwoError(
            f"training rows lack columns {missing}: build them with twotier.features."
            f"training_set(store, settings, project, {spec.model.name!r})"
        )
    train = rows[rows["ts"] < cutoff_ts]
    test = rows[rows["ts"] >= cutoff_ts]
    if train.empty or test.empty:
        raise TierTwoError(
            f"cut-off ts={cutoff_ts} leaves {len(train)} training and {len(test)} hold-out "
            f"rows (of {len(rows)}): pick a cut-off inside the events' time range"
        )
    _check_labels("training", train["label"], cutoff_ts)
    _check_labels("hold-out", test["label"], cutoff_ts)
    x_train = train[columns].to_numpy(dtype=np.float32)
    x_test = test[columns].to_numpy(dtype=np.float32)
    model = xgb.XGBClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        random_state=params.random_state,
        n_jobs=1,
        tree_method="hist",
    )
    model.fit(x_train, train["label"].to_numpy())
    native = model.predict_proba(x_test)[:, 1]
    onnx_model = to_onnx(model, spec)
    exported = TierTwoSession(onnx_model).probabilities(x_test)
    gap = check_parity(f"tier two {spec.model.name} probabilities", native, exported, tolerance)
    metrics = {
        "auc": auc(test["label"].to_numpy(), exported),
        "train_rows": float(len(train)),
        "test_rows": float(len(test)),
        "positive_rate": float(rows["label"].mean()),
        "parity_max_abs_diff": gap,
    }
    log.info(
        "tier two %s: %d training rows, hold-out AUC %.4f on %d rows, parity gap %.1e",
        spec.model.name,
        len(train),
        metrics["auc"],
        len(test),
        gap,
    )
    return TierTwoModel(
        onnx_model=onnx_model,
        spec=spec,
        native=model,
        metrics=metrics,
        params={
            **params.model_dump(),
            "model": "xgboost.XGBClassifier",
            "tree_method": "hist",
            "onnx_opset": ONNX_OPSET,
            "cutoff_ts": cutoff_ts,
        },
    )


TrainingRows = Literal["candidates", "views"]


def train_tier_two(
    store: OfflineStore,
    settings: Settings,
    project: str,
    cutoff_ts: int,
    model: str | ModelFeatureSpec = "ranker",
    params: TierTwoParams | None = None,
    tolerance: float = PARITY_TOLERANCE,
    *,
    rows: TrainingRows = "candidates",
    label_cut_quantiles: Sequence[float] = (0.7, 0.8, 0.9),
    tier_one_params: TierOneParams | None = None,
    progress: Progress = quiet,
) -> TierTwoModel:
    """Training rows from the offline store, then ``train_tier_two_frame``.

    Args:
        store: An open offline store with the project's events and materialized snapshots.
        settings: The settings declaring the project's model features.
        project: The project.
        cutoff_ts: The temporal split (ms): nothing at or after it is used.
        model: A tier-two model name of the project, or a stored spec.
        params: XGBoost settings.
        tolerance: The parity gate's largest allowed gap.
        rows: ``candidates``: tier one's candidates at label cuts before ``cutoff_ts``
            (``twotier.models.candidates``), the last cut's rows held out for AUC and
            parity; ``views``: every view before/after ``cutoff_ts``, labelled smile-or-not.
        label_cut_quantiles: The label cuts, as quantiles of the views before the cut-off.
        tier_one_params: Settings of the tier one trained at each label cut.
        progress: Receives one line per label cut.

    Raises:
        TierTwoError: No training rows.
        ParityError, OfflineFeaturesError, CandidateError: As the steps they come from.
    """
    from twotier.features.offline import training_set
    from twotier.models.candidates import candidate_rows_before

    params = params or TierTwoParams()
    spec = (
        model
        if isinstance(model, ModelFeatureSpec)
        else settings.project_features(project).model_spec(model)
    )
    if rows == "views":
        frame = training_set(store, settings, project, spec, label_action=params.label_action)
        split = cutoff_ts
    else:
        frame, split = candidate_rows_before(
            store,
            settings,
            project,
            spec,
            cutoff_ts,
            label_cut_quantiles,
            tier_one_params,
            label_action=params.label_action,
            progress=progress,
        )
    if frame.empty:
        raise TierTwoError(
            f"project {project!r} gives no {rows} training rows before ts={cutoff_ts}: load "
            "events and materialize snapshots first"
        )
    return train_tier_two_frame(frame, spec, split, params, tolerance)


__all__ = [
    "TierTwoError",
    "TierTwoModel",
    "TierTwoParams",
    "TierTwoSession",
    "TrainingRows",
    "to_onnx",
    "train_tier_two",
    "train_tier_two_frame",
]
