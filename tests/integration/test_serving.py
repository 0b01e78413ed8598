"""The scoring app on a real Ray cluster, with models from a real MLflow registry, over HTTP."""

from __future__ import annotations

import os

# Set before mlflow and ray are imported: both would otherwise report usage off-box.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import onnxmltools
import onnxruntime as ort
import pytest
import xgboost as xgb
from onnxmltools.convert.common.data_types import FloatTensorType

import twotier.registry as registry
from twotier.config import Settings
from twotier.infra.service import Service
from twotier.naming import model_name
from twotier.serve_apps.deploy import ServingError, deploy, score_over_http, serve_url

FEATURES = ["user_mean_rating", "item_mean_rating", "item_rating_count", "genre_overlap"]
ALIAS_TTL_S = 1.0


@dataclass
class Registered:
    project: str
    name: str
    onnx_bytes: bytes
    version: str


def _train_onnx(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + x[:, 3] * (1 if seed % 2 else -1) + 0.3 * rng.normal(size=400) > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3, random_state=seed).fit(x, y)
    onnx_model = onnxmltools.convert_xgboost(
        model, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    return bytes(onnx_model.SerializeToString())


def _local_scores(onnx_bytes: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    _, probabilities = session.run(None, {"input": rows.astype(np.float32)})
    return np.asarray(probabilities)[:, 1]


def _register(settings: Settings, project: str, onnx_bytes: bytes, alias: str | None) -> str:
    import onnx

    ref = registry.register_onnx(
        onnx.load_from_string(onnx_bytes),
        tracking_uri=settings.mlflow.uri,
        name=model_name(project, "tier2", "ranker"),
        feature_names=FEATURES,
        experiment=f"{project}-serving-test",
        alias=alias,
    )
    return ref.version


@pytest.fixture(scope="module")
def served(
    mlflow_server: Service, ray_cluster: Service, settings: Settings
) -> Iterator[Registered]:
    """A fresh project's ranker registered as champion, and the app deployed for it."""
    project = f"servetest_{uuid.uuid4().hex[:6]}"
    onnx_bytes = _train_onnx(seed=1)
    version = _register(settings, project, onnx_bytes, alias="champion")
    started = time.monotonic()
    deploy(settings, print, alias_cache_ttl_s=ALIAS_TTL_S, max_models_per_replica=2)
    print(f"deployed in {time.monotonic() - started:.1f} s")
    yield Registered(project, model_name(project, "tier2", "ranker"), onnx_bytes, version)


def _rows(n: int = 8) -> np.ndarray:
    return np.random.default_rng(42).normal(size=(n, len(FEATURES))).astype(np.float32)


def _post(settings: Settings, project: str, body: object) -> httpx.Response:
    return httpx.post(f"{serve_url(settings)}/v1/{project}/score", json=body, timeout=30)


def test_healthz(served: Registered, settings: Settings) -> None:
    response = httpx.get(f"{serve_url(settings)}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_scores_equal_local_onnxruntime(served: Registered, settings: Settings) -> None:
    rows = _rows()
    result = score_over_http(settings, served.project, rows.tolist())
    assert result["model"] == served.name
    assert result["version"] == served.version
    assert result["alias"] == "champion"
    np.testing.assert_allclose(result["scores"], _local_scores(served.onnx_bytes, rows), atol=1e-6)
    assert len(set(result["scores"])) > 1

    # Named features, sent in another order, give the same scores.
    named = [dict(reversed(list(zip(FEATURES, row.tolist(), strict=True)))) for row in rows]
    by_name = score_over_http(settings, served.project, features=named)
    np.testing.assert_allclose(by_name["scores"], result["scores"], atol=1e-7)


def test_missing_named_feature_is_422_naming_it(served: Registered, settings: Settings) -> None:
    record = dict(zip(FEATURES, _rows(1)[0].tolist(), strict=True))
    del record["genre_overlap"]
    response = _post(settings, served.project, {"features": [record]})
    assert response.status_code == 422
    assert "genre_overlap" in response.json()["detail"]


def test_wrong_row_width_is_422(served: Registered, settings: Settings) -> None:
    response = _post(settings, served.project, {"rows": [[1.0, 2.0]]})
    assert response.status_code == 422
    assert "takes 4" in response.json()["detail"]


def test_unknown_alias_or_model_is_404(served: Registered, settings: Settings) -> None:
    response = _post(settings, served.project, {"alias": "nosuchalias", "rows": [[0, 0, 0, 0]]})
    assert response.status_code == 404
    assert "nosuchalias" in response.json()["detail"]
    response = _post(settings, served.project, {"model": "nosuchmodel", "rows": [[0, 0, 0, 0]]})
    assert response.status_code == 404
    assert f"{served.project}.tier2.nosuchmodel" in response.json()["detail"]
    with pytest.raises(ServingError, match="HTTP 404"):
        score_over_http(settings, served.project, [[0, 0, 0, 0]], alias="nosuchalias")


@pytest.mark.parametrize(
    "body",
    [
        {"rows": [["a", 1, 2, 3]]},
        {"rows": [[0, 0, 0, 0]], "features": [{"x": 1}]},
        {"model": "ranker"},
        {"rows": [[0, 0, 0, 0]], "unexpected": 1},
        [[0, 0, 0, 0]],
    ],
    ids=["not-a-number", "both-inputs", "no-input", "unknown-field", "not-an-object"],
)
def test_malformed_body_is_422(served: Registered, settings: Settings, body: object) -> None:
    response = _post(settings, served.project, body)
    assert response.status_code == 422, response.text


def test_invalid_json_and_project_are_422(served: Registered, settings: Settings) -> None:
    response = httpx.post(
        f"{serve_url(settings)}/v1/{served.project}/score",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422
    response = _post(settings, "Bad-Project", {"rows": [[0, 0, 0, 0]]})
    assert response.status_code == 422
    assert "invalid project name" in response.json()["detail"]


def test_moving_the_alias_reaches_serving_after_the_ttl(
    served: Registered, settings: Settings
) -> None:
    rows = _rows()
    second = _train_onnx(seed=2)
    new_version = _register(settings, served.project, second, alias=None)
    assert score_over_http(settings, served.project, rows.tolist())["version"] == served.version

    registry.set_alias(settings.mlflow.uri, served.name, "champion", new_version)
    moved_at = time.monotonic()
    result: dict[str, Any] = {}
    while time.monotonic() - moved_at < ALIAS_TTL_S + 10:
        result = score_over_http(settings, served.project, rows.tolist())
        if result["version"] == new_version:
            break
        time.sleep(0.2)
    waited = time.monotonic() - moved_at
    assert result["version"] == new_version, f"still {result['version']} after {waited:.1f} s"
    assert waited < ALIAS_TTL_S + 5
    np.testing.assert_allclose(result["scores"], _local_scores(second, rows), atol=1e-6)
    assert not np.allclose(result["scores"], _local_scores(served.onnx_bytes, rows), atol=1e-3)

    # The old version is still addressable by its own alias: two versions side by side.
    registry.set_alias(settings.mlflow.uri, served.name, "previous", served.version)
    old = score_over_http(settings, served.project, rows.tolist(), alias="previous")
    assert old["version"] == served.version
    np.testing.assert_allclose(old["scores"], _local_scores(served.onnx_bytes, rows), atol=1e-6)
