"""OnnxModel scores exactly like the native XGBoost model it was exported from."""

from __future__ import annotations

import math

import numpy as np
import onnxmltools
import pytest
import xgboost as xgb
from onnxmltools.convert.common.data_types import FloatTensorType

from twotier.serve_apps.onnx_model import FeatureMismatch, OnnxModel, features_to_matrix

FEATURES = ["user_mean", "item_mean", "item_count", "genre_match"]


def _data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(int)
    return x, y


def _export(model: object) -> bytes:
    onnx_model = onnxmltools.convert_xgboost(
        model, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    return bytes(onnx_model.SerializeToString())


@pytest.fixture(scope="module")
def classifier() -> tuple[xgb.XGBClassifier, bytes]:
    x, y = _data()
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3).fit(x, y)
    return model, _export(model)


def test_classifier_scores_equal_native_probabilities(
    classifier: tuple[xgb.XGBClassifier, bytes],
) -> None:
    native, onnx_bytes = classifier
    model = OnnxModel(onnx_bytes, FEATURES, "test.tier2.ranker/1")
    x, _ = _data(50)
    scores = model.predict(x)
    assert scores.shape == (50,)
    np.testing.assert_allclose(scores, native.predict_proba(x)[:, 1], atol=1e-5)
    assert len(np.unique(scores)) > 5, "scores should vary with the input"
    assert model.feature_names == tuple(FEATURES)


def test_regressor_plain_score_output() -> None:
    x, y = _data()
    native = xgb.XGBRegressor(n_estimators=10, max_depth=3).fit(x, y)
    model = OnnxModel(_export(native), FEATURES)
    np.testing.assert_allclose(model.predict(x[:20]), native.predict(x[:20]), atol=1e-5)


def test_wrong_column_count_is_a_clear_error(classifier: tuple[xgb.XGBClassifier, bytes]) -> None:
    model = OnnxModel(classifier[1], FEATURES, "test.tier2.ranker/1")
    with pytest.raises(ValueError, match=r"rows have 3 columns but the model takes 4") as info:
        model.predict(np.zeros((2, 3), dtype=np.float32))
    assert "test.tier2.ranker/1" in str(info.value)
    assert "user_mean" in str(info.value)
    with pytest.raises(FeatureMismatch, match="2-D"):
        model.predict(np.zeros(4, dtype=np.float32))


def test_spec_that_disagrees_with_the_graph_is_rejected(
    classifier: tuple[xgb.XGBClassifier, bytes],
) -> None:
    with pytest.raises(FeatureMismatch, match="takes 4 columns but the feature spec lists 2"):
        OnnxModel(classifier[1], ["a", "b"])


def test_no_spec_takes_width_from_graph(classifier: tuple[xgb.XGBClassifier, bytes]) -> None:
    model = OnnxModel(classifier[1])
    assert model.n_features == 4
    assert model.predict(np.zeros((0, 4))).shape == (0,)


def test_named_features_follow_the_spec_order() -> None:
    records = [
        {"genre_match": 1.0, "item_mean": 3.5, "user_mean": 4.0, "item_count": 10, "x": 9},
        {"user_mean": 2.0, "item_mean": None, "item_count": 1, "genre_match": 0},
    ]
    matrix = features_to_matrix(records, FEATURES)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], [4.0, 3.5, 10.0, 1.0])
    assert math.isnan(matrix[1, 1])


def test_missing_named_features_are_named() -> None:
    records = [{"user_mean": 1.0, "item_mean": 2.0}, {"user_mean": 1.0, "genre_mtch": 1.0}]
    with pytest.raises(FeatureMismatch) as info:
        features_to_matrix(records, FEATURES)
    message = str(info.value)
    assert "'item_count' (rows 0, 1)" in message
    assert "'item_mean' (rows 1)" in message
    assert "'genre_mtch'" in message  # the likely typo is shown
