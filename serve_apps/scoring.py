"""The scoring application: a FastAPI ingress in front of multiplexed ONNX model hosts.

The ingress resolves ``alias → version`` from the MLflow registry (cached for a few
seconds) and sends ``name/version`` as the multiplexed model id, so one request is
answered by one exact version and moving an alias is a hot swap.

Run it with ``serve run twotier.serve_apps.scoring:app`` (settings from
``twotier.yaml``), with the builder ``twotier.serve_apps.scoring:build_app`` and
typed args (see ``config.yaml``), or from Python with ``twotier.serve_apps.deploy``.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation to
# validate `args` into ScoringArgs, and FastAPI reads the endpoint annotations.

import asyncio
import logging
from typing import Any, Self

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

import twotier.registry as registry
from twotier.naming import check_project, model_name
from twotier.serve_apps.alias_cache import AliasCache, RegistryUnavailable, is_not_found
from twotier.serve_apps.onnx_model import FeatureMismatch, OnnxModel, features_to_matrix

logger = logging.getLogger("ray.serve")

MAX_ROWS = 10_000
_NAME = r"^[a-z][a-z0-9_]{0,39}$"
_ALIAS = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"

# Replicas talk to loopback services only: no MLflow telemetry from inside Ray workers,
# and a registry outage fails fast instead of retrying for minutes.
_REPLICA_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def _default_tracking_uri() -> str:
    from twotier.config import load_settings

    return load_settings().mlflow.uri


class ScoringArgs(BaseModel):
    """Arguments of the scoring application (``args:`` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(default_factory=_default_tracking_uri)
    """MLflow tracking server and registry; defaults to the one in twotier's settings."""
    alias_cache_ttl_s: float = Field(5.0, ge=0)
    """How long the ingress uses a resolved alias before asking MLflow again."""
    max_models_per_replica: int = Field(4, ge=1)
    """ONNX sessions a host replica keeps loaded (least recently used is evicted)."""


# -- request and response ---------------------------------------------------------


class ScoreRequest(BaseModel):
    """Rows to score, positional (``rows``) or named (``features``), and which model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("ranker", pattern=_NAME, description="Model name within the tier.")
    tier: str = Field("tier2", pattern=_NAME, description="Model tier, e.g. tier1 or tier2.")
    alias: str = Field("champion", pattern=_ALIAS, description="Registry alias to score with.")
    rows: list[list[float | None]] | None = Field(
        None, max_length=MAX_ROWS, description="Feature rows in the model's feature order."
    )
    features: list[dict[str, float | None]] | None = Field(
        None, max_length=MAX_ROWS, description="Feature rows as name → value mappings."
    )

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.rows is None) == (self.features is None):
            raise ValueError("send exactly one of 'rows' (lists of values) or 'features' (objects)")
        return self


class ScoreResponse(BaseModel):
    """Scores in request order, with the exact version that produced them."""

    model: str
    version: str
    alias: str
    scores: list[float]


# -- the model host -----------------------------------------------------------------


def load_model(tracking_uri: str, model_id: str) -> OnnxModel:
    """Load ``name/version`` from the registry as an ONNX session (blocking).

    Raises:
        ValueError: ``model_id`` is not ``name/version``.
        ModelNotFound: The version or its ONNX artifact does not exist.
    """
    name, sep, version = model_id.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise ValueError(f"model id {model_id!r} is not 'name/version' (e.g. 'p.tier2.ranker/3')")
    ref = registry.get_version(tracking_uri, name, version)
    onnx_bytes = registry.load_onnx_bytes(tracking_uri, name, version)
    model = OnnxModel(onnx_bytes, ref.feature_names, model_id)
    logger.info(
        "loaded %s (%d features, %d bytes)", model_id, model.n_features or 0, len(onnx_bytes)
    )
    return model


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": _REPLICA_ENV}},
)
class ModelHost:
    """Holds up to ``max_models_per_replica`` ONNX sessions, keyed by ``name/version``."""

    def __init__(self, tracking_uri: str, max_models_per_replica: int = 4) -> None:
        self.tracking_uri = tracking_uri

        async def load_twotier_onnx_model(model_id: str) -> OnnxModel:
            return await asyncio.to_thread(load_model, tracking_uri, model_id)

        # Wrapped at init so the cache size is an app argument, not a code constant.
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(
            load_twotier_onnx_model
        )

    async def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Score ``matrix`` with the model named by the request's multiplexed model id."""
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            raise ValueError("no multiplexed model id on the request; call with .options(...)")
        model = await self.get_model(model_id)
        return model.predict(matrix)


# -- the ingress ---------------------------------------------------------------------

api = FastAPI(
    title="twotier scoring",
    description="Scores feature rows with the registered ONNX model an alias points at.",
)


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": _REPLICA_ENV}},
)
@serve.ingress(api)
class ScoringIngress:
    """HTTP front: validates requests, resolves aliases, routes to the model host."""

    def __init__(
        self, host: DeploymentHandle, tracking_uri: str, alias_cache_ttl_s: float = 5.0
    ) -> None:
        self.host = host
        self.tracking_uri = tracking_uri

        def resolve(name: str, alias: str) -> registry.ModelVersionRef:
            return registry.resolve(tracking_uri, name, alias)

        self.aliases = AliasCache(resolve, alias_cache_ttl_s)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness of the ingress."""
        return {"status": "ok"}

    @api.post("/v1/{project}/score", response_model=ScoreResponse)
    async def score(self, project: str, request: ScoreRequest) -> ScoreResponse:
        """Score rows with ``<project>.<tier>.<model>@<alias>``."""
        try:
            name = model_name(check_project(project), request.tier, request.model)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        ref = await self._resolve(name, request.alias)
        matrix = self._matrix(request, ref)
        try:
            scores = await self.host.options(multiplexed_model_id=ref.model_id).predict.remote(
                matrix
            )
        except registry.ModelNotFound as exc:
            raise HTTPException(404, f"{ref.model_id} cannot be loaded: {exc}") from exc
        except FeatureMismatch as exc:
            raise HTTPException(422, str(exc)) from exc
        return ScoreResponse(
            model=name,
            version=ref.version,
            alias=request.alias,
            scores=[float(s) for s in scores],
        )

    async def _resolve(self, name: str, alias: str) -> registry.ModelVersionRef:
        try:
            return await self.aliases.get(name, alias)
        except registry.ModelNotFound as exc:
            if not is_not_found(exc):
                raise HTTPException(503, f"model registry error for {name}@{alias}: {exc}") from exc
            raise HTTPException(
                404,
                f"no model {name!r} with alias {alias!r} in the registry at {self.tracking_uri}; "
                "register the model or point the alias at a version",
            ) from exc
        except RegistryUnavailable as exc:
            raise HTTPException(503, str(exc)) from exc

    @staticmethod
    def _matrix(request: ScoreRequest, ref: registry.ModelVersionRef) -> np.ndarray:
        features = ref.feature_names
        try:
            if request.features is not None:
                return features_to_matrix(request.features, features)
            rows: list[list[Any]] = request.rows or []
            widths = {len(row) for row in rows}
            if len(widths) > 1:
                raise FeatureMismatch(
                    f"rows have different lengths {sorted(widths)}; every row needs the same "
                    "features in the same order"
                )
            if features and widths and widths != {len(features)}:
                raise FeatureMismatch(
                    f"rows have {min(widths)} values but {ref.model_id} takes {len(features)}: "
                    f"{list(features)}"
                )
            width = widths.pop() if widths else len(features)
            return np.array(rows, dtype=np.float32).reshape(len(rows), width)  # None -> NaN
        except FeatureMismatch as exc:
            raise HTTPException(422, str(exc)) from exc


# -- building the application -------------------------------------------------------------


def build_app(args: ScoringArgs) -> Application:
    """The scoring application for ``args`` (a typed Serve application builder)."""
    # mypy sees the decorated classes, not the Deployment objects Serve returns.
    host = ModelHost.bind(args.tracking_uri, args.max_models_per_replica)  # type: ignore[attr-defined]
    return ScoringIngress.bind(host, args.tracking_uri, args.alias_cache_ttl_s)  # type: ignore[attr-defined]


app = build_app(ScoringArgs())
