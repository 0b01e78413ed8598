"""The MLflow model registry as twotier uses it: ONNX versions, aliases, the feature spec.

Every registered model is an ONNX graph logged with ``mlflow.onnx`` plus the ordered
list of input feature names, stored as the version tag ``twotier.feature_names`` so
that serving can build exactly the training layout.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException

from twotier.errors import TwotierError
from twotier.features.spec import ModelFeatureSpec

FEATURES_TAG = "twotier.feature_names"
SPEC_ARTIFACT = "model_features.json"
"""Run artifact holding the ``ModelFeatureSpec`` of a tier-two model (JSON)."""
ONNX_FILE = "model.onnx"

HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""MLflow client retry and timeout defaults of every process that imports the registry.

MLflow's own (7 retries, back-off factor 2, 120 s timeout) keep one request to a dead
server retrying for about four minutes, so a training run looks hung. With these, a
request to a server that is down fails after about 6 s (retries after 0, 2 and 4 s plus
jitter), and one to a server that stopped answering after at most 4 x 30 s plus those.
Values already in the environment win, so a deployment can tune them (MLflow reads them
per request).
"""
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


class ModelNotFound(LookupError):
    """A registered model, version or alias does not exist."""


class RegistryUnreachable(TwotierError):
    """The MLflow server did not answer (down, or not answering in time) after its retries."""


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (an MLflow error) was caused by the network, not by the request."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RequestException | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unreachable_error(tracking_uri: str, action: str, exc: BaseException) -> RegistryUnreachable:
    cause = str(exc).splitlines()[0][:300]
    return RegistryUnreachable(
        f"MLflow registry at {tracking_uri} did not answer while {action}: {cause}. Fix: "
        "start the MLflow server (`twotier up`) or point mlflow.uri at a running one, then "
        "retry; MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT bound how long each call waits"
    )


@dataclass(frozen=True)
class ModelVersionRef:
    """One exact registered model version."""

    name: str
    version: str
    run_id: str | None
    feature_names: tuple[str, ...]

    @property
    def model_id(self) -> str:
        """``name/version``: the id that crosses the wire to multiplexed replicas."""
        return f"{self.name}/{self.version}"


def client(tracking_uri: str) -> MlflowClient:
    """An MLflow client for the tracking server and registry at ``tracking_uri``."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# -- registration ---------------------------------------------------------------


def register_onnx(
    onnx_model: onnx.ModelProto,
    *,
    tracking_uri: str,
    name: str,
    feature_names: list[str],
    experiment: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    alias: str | None = "champion",
    spec: ModelFeatureSpec | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    run_tags: dict[str, str] | None = None,
    description: str | None = None,
    metric_steps: dict[str, list[tuple[int, float]]] | None = None,
) -> ModelVersionRef:
    """Log an ONNX model in a new run, register it as a new version and set an alias.

    Args:
        onnx_model: The converted, parity-checked model.
        tracking_uri: The MLflow server.
        name: Registered model name, ``<project>.<tier>.<model>`` (see ``twotier.naming``).
        feature_names: The model's input columns, in order.
        experiment: MLflow experiment that receives the run.
        params: Training parameters to log.
        metrics: Evaluation metrics to log.
        alias: Alias to point at the new version, or None to leave aliases alone.
        spec: The model-features spec serving rebuilds the input layout from; logged
            as the run artifact ``model_features.json`` (read it with ``load_spec``).
        tags: Extra model-version tags.
        run_name: The run's name in the MLflow UI (default: MLflow's random one).
        run_tags: Tags of the run (project, tier, model, the Dagster run that made it).
        description: The new version's description (a short model card, Markdown).
        metric_steps: Metrics logged as ``(step, value)`` pairs (e.g. hold-out AUC after
            each of some boosting rounds), plotted as curves in the run's charts.

    Returns:
        The new version.

    Raises:
        RegistryUnreachable: The MLflow server did not answer within the client's retries
            (``HTTP_DEFAULTS``); the run of this call, if it was created, stays unfinished.
    """
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name, tags=run_tags) as run:
            if params:
                mlflow.log_params(params)
            if metrics:
                mlflow.log_metrics(metrics)
            for key, values in (metric_steps or {}).items():
                for step, point in values:
                    mlflow.log_metric(key, float(point), step=int(step))
            mlflow.log_dict({"feature_names": feature_names}, "feature_spec.json")
            if spec is not None:
                mlflow.log_dict(spec.model_dump(mode="json"), SPEC_ARTIFACT)
            # log_model moves large initializers to external data in the proto it is given;
            # hand it a copy so the caller's model stays whole.
            logged = onnx.ModelProto()
            logged.CopyFrom(onnx_model)
            info = mlflow.onnx.log_model(
                logged,
                name="model",
                registered_model_name=name,
                signature=_signature(feature_names),
            )
        c = client(tracking_uri)
        version = str(info.registered_model_version)
        c.set_model_version_tag(name, version, FEATURES_TAG, json.dumps(feature_names))
        for key, value in (tags or {}).items():
            c.set_model_version_tag(name, version, key, value)
        if description:
            c.update_model_version(name, version, description=description)
        if alias:
            c.set_registered_model_alias(name, alias, version)
    except (MlflowException, RequestException, OSError) as exc:
        if _unreachable(exc):
            raise _unreachable_error(tracking_uri, f"registering {name!r}", exc) from exc
        raise
    return ModelVersionRef(name, version, run.info.run_id, tuple(feature_names))


def _signature(feature_names: list[str]) -> Any:
    """The input signature: one float column per feature, named as the model's columns
    (None for a model without named inputs, e.g. tier one's user-id graph)."""
    if not feature_names:
        return None
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("float", n) for n in feature_names]))


def set_alias(tracking_uri: str, name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of model ``name`` at ``version`` (the promotion step).

    Raises:
        RegistryUnreachable: The MLflow server did not answer within the client's retries.
    """
    try:
        client(tracking_uri).set_registered_model_alias(name, alias, str(version))
    except (MlflowException, RequestException, OSError) as exc:
        if _unreachable(exc):
            action = f"moving {name}@{alias} to version {version}"
            raise _unreachable_error(tracking_uri, action, exc) from exc
        raise


# -- resolution -----------------------------------------------------------------


def _ref(mv: Any) -> ModelVersionRef:
    tags = mv.tags or {}
    features = tuple(json.loads(tags[FEATURES_TAG])) if FEATURES_TAG in tags else ()
    return ModelVersionRef(mv.name, str(mv.version), mv.run_id, features)


def resolve(tracking_uri: str, name: str, alias: str) -> ModelVersionRef:
    """Resolve ``name@alias`` to the exact version it points at now.

    Raises:
        ModelNotFound: The model or alias does not exist.
    """
    try:
        mv = client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _unreachable(exc):  # same type as before (callers tell outages by the cause)
            action = f"resolving {name}@{alias}"
            raise ModelNotFound(str(_unreachable_error(tracking_uri, action, exc))) from exc
        raise ModelNotFound(f"model {name!r} has no alias {alias!r} in {tracking_uri}") from exc
    return _ref(mv)


def get_version(tracking_uri: str, name: str, version: str | int) -> ModelVersionRef:
    """The registered version ``name/version``.

    Raises:
        ModelNotFound: The model or version does not exist.
    """
    try:
        mv = client(tracking_uri).get_model_version(name, str(version))
    except MlflowException as exc:
        if _unreachable(exc):
            action = f"reading version {name}/{version}"
            raise ModelNotFound(str(_unreachable_error(tracking_uri, action, exc))) from exc
        raise ModelNotFound(f"model {name!r} has no version {version} in {tracking_uri}") from exc
    return _ref(mv)


def load_onnx_bytes(tracking_uri: str, name: str, version: str | int) -> bytes:
    """Download ``name/version`` and return the whole ONNX graph as one byte string.

    ``mlflow.onnx`` stores large tensors as external data files beside ``model.onnx``;
    they are read back into the graph, so the bytes stand alone. A model over protobuf's
    2 GB limit cannot be one byte string: serving opens such models from their folder.
    """
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri
            )
        except MlflowException as exc:
            raise ModelNotFound(f"cannot download models:/{name}/{version}: {exc}") from exc
        files = sorted(Path(path).rglob("*.onnx"))
        if not files:
            raise ModelNotFound(f"models:/{name}/{version} holds no .onnx file")
        return onnx.load(str(files[0]), load_external_data=True).SerializeToString()


def load_spec(tracking_uri: str, ref: ModelVersionRef) -> ModelFeatureSpec | None:
    """The model-features spec logged with ``ref``, or None if it was registered without."""
    if ref.run_id is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=ref.run_id,
                artifact_path=SPEC_ARTIFACT,
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
        except (MlflowException, OSError):
            return None
        return ModelFeatureSpec.model_validate_json(Path(path).read_text())
