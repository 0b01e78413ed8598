"""The real MLflow server of the stack: runs, proxied artifacts, registry aliases."""

from __future__ import annotations

import os

# Set before mlflow is imported: its telemetry client starts at import time.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import uuid
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from twotier.infra.mlflow_server import MLflowService
from twotier.infra.service import Service


def test_run_with_param_metric_and_artifact_goes_through_the_server(
    mlflow_server: Service, tmp_path: Path
) -> None:
    assert isinstance(mlflow_server, MLflowService)
    client = MlflowClient(tracking_uri=mlflow_server.endpoint)
    experiment_id = client.create_experiment(f"it-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_param(run_id, "learning_rate", "0.1")
    client.log_metric(run_id, "ndcg_at_10", 0.42, step=3)
    note = tmp_path / "note.txt"
    note.write_text("hello from the test")
    client.log_artifact(run_id, str(note), artifact_path="notes")
    client.set_terminated(run_id)

    # Artifacts are proxied: the run points at mlflow-artifacts:/, not at a local path.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list(Path(mlflow_server.artifacts_destination).glob(f"*/{run_id}/artifacts/notes/*"))
    assert len(stored) == 1 and stored[0].read_text() == "hello from the test"

    fetched = client.get_run(run_id)
    assert fetched.data.params == {"learning_rate": "0.1"}
    assert fetched.data.metrics == {"ndcg_at_10": 0.42}
    assert fetched.info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    downloaded = client.download_artifacts(run_id, "notes/note.txt", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == "hello from the test"


def test_registered_version_is_found_by_alias(mlflow_server: Service, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.endpoint, registry_uri=mlflow_server.endpoint)
    name = f"it_model_{uuid.uuid4().hex[:8]}"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(b"not really onnx")
    run_info = client.create_run(client.create_experiment(f"reg-run-{uuid.uuid4().hex[:8]}")).info
    client.log_artifacts(run_info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run_info.run_id)

    client.create_registered_model(name)
    first = client.create_model_version(
        name, source=f"{run_info.artifact_uri}/model", run_id=run_info.run_id
    )
    second = client.create_model_version(
        name, source=f"{run_info.artifact_uri}/model", run_id=run_info.run_id
    )
    client.set_registered_model_alias(name, "champion", first.version)
    assert client.get_model_version_by_alias(name, "champion").version == first.version

    client.set_registered_model_alias(name, "champion", second.version)
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == second.version == "2"
    assert champion.run_id == run_info.run_id
    assert "champion" in champion.aliases
    with pytest.raises(MlflowException, match="challenger"):
        client.get_model_version_by_alias(name, "challenger")


def test_security_middleware_accepts_loopback_names_and_rejects_others(
    mlflow_server: Service,
) -> None:
    url = f"{mlflow_server.endpoint}/api/2.0/mlflow/experiments/search"
    port = mlflow_server.settings.mlflow.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        response = httpx.post(url, json={"max_results": 1}, headers={"Host": host})
        assert response.status_code == 200, (host, response.text)
    rebinding = httpx.post(url, json={"max_results": 1}, headers={"Host": "evil.example"})
    assert rebinding.status_code == 403
