"""One ONNX model in memory: an onnxruntime session plus the feature spec it was trained on.

A plain class with no Ray in it, so it can be unit-tested and reused outside Serve.
Models come from bytes (the registry's ONNX artifact); nothing is ever unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class FeatureMismatch(ValueError):
    """Input rows do not match a model's feature spec (column count or names)."""


def features_to_matrix(
    records: Sequence[Mapping[str, float | None]], feature_names: Sequence[str]
) -> np.ndarray:
    """Order named feature records into a float32 matrix in the model's column order.

    ``None`` becomes NaN (a missing value for tree models); names a model does not use
    are ignored.

    Raises:
        FeatureMismatch: Some records lack features the model needs; the message names them.
    """
    if not feature_names:
        raise FeatureMismatch(
            "the model has no feature spec (tag twotier.feature_names), so named features "
            "cannot be ordered; send positional 'rows' instead"
        )
    missing: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        for name in feature_names:
            if name not in record:
                missing.setdefault(name, []).append(i)
    if missing:
        detail = ", ".join(f"{name!r} (rows {_few(rows)})" for name, rows in missing.items())
        extra = sorted({k for r in records for k in r} - set(feature_names))
        hint = f"; unused names sent: {extra}" if extra else ""
        raise FeatureMismatch(
            f"missing features {detail}; the model needs {list(feature_names)}{hint}"
        )
    return np.array(
        [[_value(r[name]) for name in feature_names] for r in records], dtype=np.float32
    ).reshape(len(records), len(feature_names))


def _value(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _few(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:5])
    return shown + (f", ... {len(indices)} in all" if len(indices) > 5 else "")


class OnnxModel:
    """A binary classifier or regressor exported to ONNX, scoring one matrix at a time.

    Args:
        onnx_bytes: The serialized ONNX graph, or the path of an ``.onnx`` file (tensors
            saved as ONNX external data are read from beside it: the only way to open a
            model over protobuf's 2 GB limit).
        feature_names: The ordered input columns; empty means "take the count from the graph".
        model_id: A name for messages, e.g. ``movielens.tier2.ranker/3``.
    """

    def __init__(
        self,
        onnx_bytes: bytes | str | Path,
        feature_names: Sequence[str] = (),
        model_id: str = "model",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        source = str(onnx_bytes) if isinstance(onnx_bytes, Path) else onnx_bytes
        self.session = ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.model_id = model_id
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{model_id}: expected an ONNX graph with one input tensor, got "
                f"{[i.name for i in inputs]}; export the model with a single [N, F] input"
            )
        self._input = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        graph_width = width if isinstance(width, int) else None
        if graph_width is not None and self.feature_names and graph_width != len(feature_names):
            raise FeatureMismatch(
                f"{model_id}: the ONNX input takes {graph_width} columns but the feature spec "
                f"lists {len(feature_names)} ({list(feature_names)}); re-register the model "
                "with its real feature names"
            )
        self.n_features: int | None = len(self.feature_names) or graph_width
        self._output = self._score_output()

    def _score_output(self) -> str:
        names = [o.name for o in self.session.get_outputs()]
        if "probabilities" in names:
            return "probabilities"
        for output in self.session.get_outputs():
            if output.type == "tensor(float)" or output.type == "tensor(double)":
                return str(output.name)
        return names[-1]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Score rows of features in the spec's column order.

        Args:
            matrix: ``[N, F]`` numbers, ``F == len(feature_names)``.

        Returns:
            ``[N]`` float32: the positive-class probability of a binary classifier, or the
            plain score of a regressor / ranker.

        Raises:
            FeatureMismatch: ``matrix`` is not two-dimensional or has the wrong column count.
        """
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2:
            raise FeatureMismatch(
                f"{self.model_id}: expected a 2-D [rows, features] matrix, got shape "
                f"{matrix.shape}; send a list of rows"
            )
        if self.n_features is not None and matrix.shape[1] != self.n_features:
            spec = f" {list(self.feature_names)}" if self.feature_names else ""
            raise FeatureMismatch(
                f"{self.model_id}: rows have {matrix.shape[1]} columns but the model takes "
                f"{self.n_features}{spec}; send the features in that order"
            )
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        (out,) = self.session.run([self._output], {self._input: matrix})
        return self._positive_scores(out)

    def _positive_scores(self, out: Any) -> np.ndarray:
        if isinstance(out, list):  # ZipMap output: one {label: probability} per row
            return np.array([row.get(1, row.get("1", 0.0)) for row in out], dtype=np.float32)
        scores = np.asarray(out, dtype=np.float32)
        if scores.ndim == 1:
            return scores
        if scores.ndim == 2 and scores.shape[1] == 1:
            return scores[:, 0]
        if scores.ndim == 2 and scores.shape[1] == 2:
            return scores[:, 1]
        raise ValueError(
            f"{self.model_id}: output {self._output!r} has shape {scores.shape}; only binary "
            "classifiers ([N, 2] probabilities) and single-score models are supported"
        )
