"""The model-features spec travels with a registered version through the real MLflow."""

from __future__ import annotations

import uuid

import onnx
from onnx import TensorProto, helper

from twotier import registry
from twotier.config import Settings
from twotier.features.spec import ModelFeatureSpec
from twotier.infra.service import Service


def _identity() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_spec_is_logged_with_the_version_and_read_back(
    mlflow_server: Service, settings: Settings
) -> None:
    spec = settings.project_features("movielens").model_spec("ranker")
    name = f"specs.tier2.m{uuid.uuid4().hex[:6]}"
    with_spec = registry.register_onnx(
        _identity(),
        tracking_uri=mlflow_server.endpoint,
        name=name,
        feature_names=spec.columns(),
        experiment="specs",
        spec=spec,
        tags={"twotier.tier": "tier2"},
        alias=None,
    )
    loaded = registry.load_spec(mlflow_server.endpoint, with_spec)
    assert isinstance(loaded, ModelFeatureSpec)
    assert loaded == spec and loaded.columns() == spec.columns()
    version = registry.client(mlflow_server.endpoint).get_model_version(name, with_spec.version)
    assert version.tags["twotier.tier"] == "tier2"

    without = registry.register_onnx(
        _identity(),
        tracking_uri=mlflow_server.endpoint,
        name=name,
        feature_names=["a", "b"],
        experiment="specs",
        alias=None,
    )
    assert registry.load_spec(mlflow_server.endpoint, without) is None


def test_registering_leaves_the_callers_model_whole(mlflow_server: Service) -> None:
    import numpy as np
    from onnx import numpy_helper

    weights = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(2, 2048), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2048])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weights]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    ref = registry.register_onnx(
        model,
        tracking_uri=mlflow_server.endpoint,
        name=f"specs.tier1.w{uuid.uuid4().hex[:6]}",
        feature_names=[],
        experiment="specs",
        alias=None,
    )
    assert model.SerializeToString() == before  # weights not moved to external data
    loaded = onnx.load_from_string(
        registry.load_onnx_bytes(mlflow_server.endpoint, *ref.model_id.split("/"))
    )
    assert numpy_helper.to_array(loaded.graph.initializer[0]).shape == (2, 2048)


def test_a_run_is_named_tagged_and_its_version_carries_a_model_card(
    mlflow_server: Service,
) -> None:
    from mlflow.models import get_model_info

    name = f"cards.tier2.m{uuid.uuid4().hex[:6]}"
    ref = registry.register_onnx(
        _identity(),
        tracking_uri=mlflow_server.endpoint,
        name=name,
        feature_names=["user_stats.views", "item_stats.views"],
        experiment="cards",
        metrics={"auc": 0.75},
        alias=None,
        run_name="cards.tier2.m abcdef12",
        run_tags={"twotier.project": "cards", "dagster.run_id": "abcdef12-run"},
        description="**a model card**\n\n- hold-out AUC: 0.7500",
        metric_steps={"holdout_auc_by_round": [(1, 0.6), (5, 0.7), (10, 0.75)]},
    )
    c = registry.client(mlflow_server.endpoint)
    assert ref.run_id is not None
    run = c.get_run(ref.run_id)
    assert run.info.run_name == "cards.tier2.m abcdef12"
    assert run.data.tags["twotier.project"] == "cards"
    assert run.data.tags["dagster.run_id"] == "abcdef12-run"
    steps = c.get_metric_history(ref.run_id, "holdout_auc_by_round")
    assert sorted((m.step, m.value) for m in steps) == [(1, 0.6), (5, 0.7), (10, 0.75)]
    assert "hold-out AUC: 0.7500" in str(c.get_model_version(name, ref.version).description)
    # The signature names the model's input columns.
    info = get_model_info(f"models:/{name}/{ref.version}")
    assert info.signature.inputs.input_names() == ["user_stats.views", "item_stats.views"]
