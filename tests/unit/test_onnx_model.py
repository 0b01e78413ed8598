"""OnnxModel scores like the native model; the loader reads ONNX external data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxmltools
import pytest
import xgboost as xgb
from onnx.external_data_helper import uses_external_data
from onnxmltools.convert.common.data_types import FloatTensorType

from twotier.models.tier_one import TierOneSession, export_tier_one
from twotier.serve_apps.loader import ModelLoadError, open_onnx, parse_model_id
from twotier.serve_apps.onnx_model import FeatureMismatch, OnnxModel, features_to_matrix
from twotier.serve_apps.testing import tiny_tier_one

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


# -- loading registered artifacts: ONNX external data -----------------------------------


def _linear_graph(weights: np.ndarray) -> onnx.ModelProto:
    """``features [N, F] @ weights [F, 1]``: a tier-two-shaped graph with a real initializer."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["score"])],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_parse_model_id_names_the_shape() -> None:
    assert parse_model_id("movielens.tier2.ranker/3") == ("movielens.tier2.ranker", "tier2", "3")
    for bad in ("movielens.tier2.ranker", "ranker/3", "a.b.c/latest", "a..c/1"):
        with pytest.raises(ValueError, match=r"<project>\.<tier>\.<model>/<version>"):
            parse_model_id(bad)


def test_tier_one_saved_with_external_data_loads_and_is_measured(tmp_path: Path) -> None:
    model = tiny_tier_one(n_users=10, n_items=30, seed=3, top_k=10)
    path = tmp_path / "model.onnx"
    onnx.save_model(
        export_tier_one(model),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    data = tmp_path / "model.onnx.data"
    bare = onnx.load(str(path), load_external_data=False)
    assert all(uses_external_data(t) for t in bare.graph.initializer)  # tensors left the file
    session, nbytes = open_onnx(path, "tier1", "p.tier1.candidates/1")
    assert isinstance(session, TierOneSession)
    assert nbytes == path.stat().st_size + data.stat().st_size
    expected = TierOneSession(export_tier_one(model)).candidates(["1", "2"], k=5)
    assert session.candidates(["1", "2"], k=5) == expected

    # Over the in-memory limit a tier-one graph cannot be served: the error says why.
    with pytest.raises(ModelLoadError, match="in-memory limit"):
        open_onnx(path, "tier1", "p.tier1.candidates/1", in_memory_limit_bytes=100)


def test_tier_two_over_the_limit_is_opened_from_its_path(tmp_path: Path) -> None:
    weights = np.arange(1, 7, dtype=np.float32).reshape(6, 1)
    path = tmp_path / "model.onnx"
    onnx.save_model(
        _linear_graph(weights),
        str(path),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    for limit in (10**9, 10):  # in memory, then from the path (as models over 2 GB are)
        session, nbytes = open_onnx(path, "tier2", "p.tier2.ranker/1", (), limit)
        assert isinstance(session, OnnxModel)
        assert nbytes == path.stat().st_size + (tmp_path / "weights.bin").stat().st_size
        np.testing.assert_allclose(session.predict(x), (x @ weights)[:, 0], rtol=1e-5)
    with pytest.raises(ModelLoadError, match="unknown tier"):
        open_onnx(path, "tier3", "p.tier3.x/1")
