"""The serving application: a FastAPI ingress in front of both tiers' model hosts.

The ingress picks the experiment group (``routing``), resolves each tier's alias to an
exact version (its copy of the ``ModelDirectory`` table, kept current by long polling)
and sends ``name/version`` as the multiplexed model id, so one request is answered by one
exact version per tier and moving an alias is a hot swap.

Run it with ``serve deploy serve_apps/config.yaml`` (typed builder ``build_app``),
``serve run twotier.serve_apps.app:app`` (settings from the stack's environment or
``twotier.yaml``), or ``twotier deploy`` (``twotier.serve_apps.deploy``).
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation to
# validate `args` into ServingArgs, and FastAPI reads the endpoint annotations.

import asyncio
import hmac
import logging
import time
import uuid
from typing import Any

import httpx
import numpy as np
from fastapi import Depends, Header, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import Application, metrics
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from twotier.config import ConfigError, Settings
from twotier.events import Event
from twotier.feature_log import sample_request
from twotier.features.spec import ProjectFeatures
from twotier.naming import check_project, model_name
from twotier.registry import ModelNotFound, ModelVersionRef
from twotier.serve_apps.alias_directory import RegistryUnavailable
from twotier.serve_apps.hosts import (
    REPLICA_ENV,
    ModelDirectory,
    ModelHost,
    ref_from_dict,
    replica_name,
    replica_settings,
)
from twotier.serve_apps.loader import ModelLoadError
from twotier.serve_apps.onnx_model import FeatureMismatch, features_to_matrix
from twotier.serve_apps.recommendation_log import (
    RECOMMENDATION_ACTION,
    LoggedFeatures,
    RecommendationLog,
)
from twotier.serve_apps.routing import (
    CHAMPION,
    TIER_ONE_MODEL,
    Generations,
    Route,
    RouteNotFound,
    check_model,
    route,
    tier_two_model,
)
from twotier.serve_apps.schemas import (
    AdminModelRequest,
    AdminModelResponse,
    ErrorDetail,
    FirstTierRequest,
    FirstTierResponse,
    ItemScore,
    ModelUsed,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    SecondTierRequest,
    SecondTierResponse,
)

logger = logging.getLogger("ray.serve")

HOT_SWAP_TIMEOUT_S = 10.0
"""``POST /v1/admin/models`` waits this long for every replica to serve the new version."""
REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
"""A model-host replica died under a call (kill -9, node loss); Serve replaces it."""


class ServingArgs(BaseModel):
    """Arguments of the application (``args:`` in a Serve config file).

    ``settings`` are overrides on the stack's settings (``TWOTIER_*`` variables of the
    Ray node, then ``twotier.yaml``), e.g. ``{"serving": {"alias_poll_s": 2}}``.
    """

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict)
    log_recommendations: bool = True
    """Send each served recommendation to the project's Kafka topic."""


def _cause(exc: BaseException) -> BaseException:
    """The exception a deployment raised, without Ray's wrapper (and its traceback text)."""
    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def _matrix(body: ScoreRequest, ref: ModelVersionRef, names: list[str]) -> np.ndarray:
    if body.features is not None:
        return features_to_matrix(body.features, names or list(ref.feature_names))
    rows: list[list[Any]] = body.rows or []
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise FeatureMismatch(
            f"rows have different lengths {sorted(widths)}; every row needs the same features "
            "in the same order"
        )
    if names and widths and widths != {len(names)}:
        raise FeatureMismatch(
            f"rows have {min(widths)} values but {ref.model_id} takes {len(names)}: {names}"
        )
    width = widths.pop() if widths else len(names)
    return np.array(rows, dtype=np.float32).reshape(len(rows), width)  # None -> NaN


def _logged_features(ranked: dict[str, Any], top: np.ndarray) -> LoggedFeatures | None:
    """The served items' input rows of a sampled request (None: not sampled or degraded,
    whose defaults say nothing about the feature pipelines)."""
    if "features" not in ranked or ranked["degraded"]:
        return None
    return LoggedFeatures(ranked["columns"], ranked["features"][top], ranked["features_ts"])


def _node_metrics_url() -> str | None:
    """The Prometheus endpoint of the Ray node this replica runs on, if it exports one."""
    import ray

    try:
        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
                return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    except Exception as exc:
        logger.warning("cannot find this node's metrics export port: %s", exc)
    return None


# -- the ingress (everything it calls is defined above: @serve.ingress copies the FastAPI
# app, and its endpoints' globals, at decoration time) ---------------------------

# Swagger UI and ReDoc served from the app itself (fastapi-offline's copies): /docs and
# /redoc work on a machine without internet.
api = FastAPIOffline(
    title="twotier serving",
    description=(
        "Two-tier recommendations: tier one (candidates over the whole catalogue) and tier "
        "two (ranking on online features), with models pulled by registry alias, A/B groups "
        "and hot swap. Every answer names its experiment group and model versions."
    ),
    version="1",
)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: ``{"detail": "..."}`` with the reason."""
    what = {
        401: "No admin token: send `Authorization: Bearer <serving.admin_token>`.",
        403: "Wrong admin token.",
        404: "Unknown project, model, experiment, group or alias (the detail names it).",
        413: "More candidates (or excluded ids) than serving.max_candidates.",
        422: "The body does not validate (the detail names the field).",
        503: "The model registry or the online store is unreachable; retry.",
        504: "The alias moved, but some replicas did not confirm in time.",
    }
    return {code: {"model": ErrorDetail, "description": what[code]} for code in codes}


TAGS = [
    {"name": "recommend", "description": "Both tiers in one call: what an app asks."},
    {"name": "tier one", "description": "Candidates over the whole catalogue."},
    {"name": "tier two", "description": "Ranking candidates on online features."},
    {"name": "models", "description": "Registered models by alias, scoring raw rows."},
    {"name": "admin", "description": "Move an alias and hot-swap every replica."},
    {"name": "operations", "description": "Health and metrics."},
]
api.openapi_tags = TAGS
_bearer = HTTPBearer(auto_error=False, description="serving.admin_token")


class _Metrics:
    """Request metrics of the ingress, exported by Ray with Serve's own."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "twotier_requests",
            description="HTTP requests by route and status code.",
            tag_keys=("route", "status"),  # type: ignore[arg-type]  # Ray types it Tuple[str]
        )
        self.latency = metrics.Histogram(
            "twotier_request_latency_ms",
            description="Latency of HTTP requests at the ingress, by route.",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            tag_keys=("route",),
        )
        self.recommendations = metrics.Counter(
            "twotier_recommendations",
            description="Recommendation answers by project, experiment and group.",
            tag_keys=("project", "experiment", "group"),  # type: ignore[arg-type]
        )
        self.degraded = metrics.Counter(
            "twotier_features_degraded",
            description="Answers built from feature defaults (online store unreadable).",
            tag_keys=("project",),
        )


_replica_metrics: list[_Metrics] = []


def replica_metrics() -> _Metrics:
    """The ingress metrics of this process (created once, inside the replica)."""
    if not _replica_metrics:
        _replica_metrics.append(_Metrics())
    return _replica_metrics[0]


@api.middleware("http")
async def _observe(request: Request, call_next: Any) -> Response:
    """Count every request by route template and status, and time it."""
    started = time.perf_counter()
    response: Response = await call_next(request)
    path = getattr(request.scope.get("route"), "path", "unmatched")
    recorded = replica_metrics()
    recorded.requests.inc(tags={"route": path, "status": str(response.status_code)})
    recorded.latency.observe((time.perf_counter() - started) * 1000.0, tags={"route": path})
    return response


def _generation_store(settings: Settings) -> Any:
    """The online store the ingress reads shuffle generations from (short timeouts)."""
    if settings.online_store.type != "mongodb":
        return None
    from twotier.online_store.mongodb import MongoDBOnlineStore

    return MongoDBOnlineStore.from_settings(
        settings, serverSelectionTimeoutMS=500, connectTimeoutMS=500, socketTimeoutMS=1000
    )


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": REPLICA_ENV}},
)
@serve.ingress(api)
class Ingress:
    """HTTP front: validates requests, routes A/B groups, resolves aliases, calls the tiers."""

    async def __init__(  # type: ignore[misc]  # Serve supports async constructors
        self,
        tier_one: DeploymentHandle,
        tier_two: DeploymentHandle,
        directory: DeploymentHandle,
        settings: dict[str, Any],
        log_recommendations: bool = True,
    ) -> None:
        self.tier_one = tier_one
        self.tier_two = tier_two
        self.directory = directory
        self.settings: Settings = replica_settings(settings)
        self.serving = self.settings.serving
        self.replica = replica_name()
        self.aliases: dict[tuple[str, str], ModelVersionRef] = {}
        self.generation = 0
        self.generations = Generations(
            _generation_store(self.settings), self.serving.experiment_generation_ttl_s
        )
        self.log = RecommendationLog(self.settings) if log_recommendations else None
        self.metrics = replica_metrics()
        self._metrics_url = _node_metrics_url()
        self._sync = asyncio.get_running_loop().create_task(self._sync_forever())

    # -- operational routes --------------------------------------------------------

    @api.get("/healthz", tags=["operations"])
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the ingress, and the alias generation it serves."""
        return {"status": "ok", "generation": self.generation}

    @api.get("/v1/models", tags=["models"])
    async def models(self) -> dict[str, Any]:
        """Which version each known alias resolves to, what each replica holds, and per
        project which alias each A/B group is served."""
        status: dict[str, Any] = await self.directory.status.remote()
        status["experiments"] = {
            project: {
                e.name: {g.name: {"alias": g.alias, "share": g.share} for g in e.groups}
                for e in features.experiments
            }
            for project, features in self.settings.projects.items()
        }
        return status

    @api.get(
        "/metrics", response_class=PlainTextResponse, tags=["operations"], responses=_errors(503)
    )
    async def prometheus(self) -> Response:
        """Prometheus text of this node: Ray Serve's metrics and twotier's.

        Production scrapes every node's metrics export port directly; this route is the
        local shortcut.
        """
        if self._metrics_url is None:
            raise HTTPException(503, "this Ray node exports no metrics (no metrics export port)")
        async with httpx.AsyncClient(timeout=5.0) as client:
            try:
                answer = await client.get(self._metrics_url)
            except httpx.HTTPError as exc:
                raise HTTPException(
                    503, f"Ray's metrics agent at {self._metrics_url} did not answer: {exc}"
                ) from exc
        # Ray prefixes application metrics with ray_: give twotier's their documented names.
        text = answer.text.replace("ray_twotier_", "twotier_")
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # -- the tiers ---------------------------------------------------------------------

    @api.post(
        "/v1/{project}/first-tier-model",
        response_model=FirstTierResponse,
        tags=["tier one"],
        responses=_errors(404, 413, 422, 503),
    )
    async def first_tier(self, project: str, body: FirstTierRequest) -> FirstTierResponse:
        """A user → K candidates over the whole catalogue (tier one), best first."""
        features = self._project(project)
        k = body.k or self.serving.default_k
        self._cap("k", k)
        self._cap("exclude", len(body.exclude))
        chosen = self._route(project, features, body.user_id, body)
        ref, used = await self._tier_ref(project, "tier1", TIER_ONE_MODEL, chosen)
        found = await self._call(
            self.tier_one, ref, "candidates", body.user_id, k, list(body.exclude)
        )
        pairs = found["pairs"]
        return FirstTierResponse(
            project=project,
            user_id=body.user_id,
            experiment=chosen.experiment,
            group=chosen.group,
            models=[used],
            candidates=[ItemScore(item_id=i, score=s) for i, s in pairs],
            cold_user=found["cold"],
        )

    @api.post(
        "/v1/{project}/second-tier-model",
        response_model=SecondTierResponse,
        tags=["tier two"],
        responses=_errors(404, 413, 422, 503),
    )
    async def second_tier(self, project: str, body: SecondTierRequest) -> SecondTierResponse:
        """A user and candidate ids → tier-two scores (request order) and the ranking."""
        features = self._project(project)
        self._cap("candidates", len(body.candidates))
        chosen = self._route(project, features, body.user_id, body)
        model = self._tier_two_model(project, features, body.model)
        ref, used = await self._tier_ref(project, "tier2", model, chosen)
        ranked = await self._call(
            self.tier_two,
            ref,
            "rank",
            project,
            body.user_id,
            list(body.candidates),
            dict(body.request_features),
        )
        if ranked["degraded"]:
            self.metrics.degraded.inc(tags={"project": project})
        order = np.argsort(-np.asarray(ranked["scores"]), kind="stable")
        return SecondTierResponse(
            project=project,
            user_id=body.user_id,
            experiment=chosen.experiment,
            group=chosen.group,
            models=[used],
            scores=ranked["scores"],
            ranking=[
                ItemScore(item_id=body.candidates[i], score=ranked["scores"][i]) for i in order
            ],
            features_degraded=ranked["degraded"],
        )

    @api.post(
        "/v1/{project}/recommend",
        response_model=RecommendResponse,
        tags=["recommend"],
        responses=_errors(404, 413, 422, 503),
    )
    async def recommend(self, project: str, body: RecommendRequest) -> RecommendResponse:
        """Both tiers: K candidates, seen items removed, ranked by tier two, top N."""
        features = self._project(project)
        self._cap("exclude", len(body.exclude))
        chosen = self._route(project, features, body.user_id, body)
        model = self._tier_two_model(project, features, body.model)
        # The ranker's declared mix: tier one's best (or the request's k), then popular.
        # Unasked, the declared count is held within serving.max_candidates.
        mix = features.model_spec(model).model.candidates
        cap = self.serving.max_candidates
        k = body.k or max(1, min(mix.tier_one, cap - mix.popular))
        self._cap("k", k + mix.popular)
        (ref1, used1), (ref2, used2) = await asyncio.gather(
            self._tier_ref(project, "tier1", TIER_ONE_MODEL, chosen),
            self._tier_ref(project, "tier2", model, chosen),
        )
        found = await self._call(
            self.tier_one, ref1, "candidates", body.user_id, k, list(body.exclude), mix.popular
        )
        candidates = [item for item, _ in found["pairs"]]
        per_candidate = found["features"]  # tier one's score and rank of each
        ranked: dict[str, Any] = {"scores": [], "seen": [], "degraded": False}
        if candidates:
            ranked = await self._call(
                self.tier_two,
                ref2,
                "rank",
                project,
                body.user_id,
                candidates,
                dict(body.request_features),
                per_candidate,
                self.log is not None and sample_request(self.serving.feature_log_fraction),
            )
        scores = np.asarray(ranked["scores"], dtype=np.float64)
        seen = np.asarray(ranked["seen"], dtype=bool)
        keep = np.flatnonzero(~seen) if len(seen) else np.arange(0)
        if found["cold"] and not mix.rerank_cold:
            # A user new to tier one keeps its fallback's order (recent popularity).
            scores = np.asarray([score for _, score in found["pairs"]], dtype=np.float64)
            top = keep[: body.n]
        else:
            top = keep[np.argsort(-scores[keep], kind="stable")][: body.n]
        items = [ItemScore(item_id=candidates[i], score=float(scores[i])) for i in top]
        if body.attributes and items:
            await self._attach_attributes(project, items, body.attributes)
        request_id = uuid.uuid4().hex
        self.metrics.recommendations.inc(
            tags={
                "project": project,
                "experiment": chosen.experiment or "",
                "group": chosen.group or "",
            }
        )
        if ranked["degraded"]:
            self.metrics.degraded.inc(tags={"project": project})
        if self.log is not None:
            self.log.log(
                self._events(project, body, chosen, used1, used2, request_id, items),
                _logged_features(ranked, top),
            )
        return RecommendResponse(
            project=project,
            user_id=body.user_id,
            experiment=chosen.experiment,
            group=chosen.group,
            models=[used1, used2],
            request_id=request_id,
            items=items,
            candidates=len(candidates),
            seen_excluded=int(seen.sum()),
            features_degraded=ranked["degraded"],
            cold_user=found["cold"],
        )

    @api.post(
        "/v1/{project}/score",
        response_model=ScoreResponse,
        tags=["models"],
        responses=_errors(404, 422, 503),
    )
    async def score(self, project: str, body: ScoreRequest) -> ScoreResponse:
        """Raw feature rows → scores of ``<project>.<tier>.<model>@<alias>`` (debugging)."""
        features = self._project(project)
        try:
            check_model(project, features, body.tier, body.model)
        except RouteNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        if body.tier != "tier2":
            raise HTTPException(422, "raw feature rows score tier-two models only")
        rows = body.rows if body.rows is not None else body.features or []
        self._cap("rows", len(rows))
        name = model_name(project, body.tier, body.model)
        ref = await self._resolve(name, body.alias)
        names = await self._call(self.tier_two, ref, "feature_names")
        try:
            matrix = _matrix(body, ref, names)
        except FeatureMismatch as exc:
            raise HTTPException(422, str(exc)) from exc
        scores = await self._call(self.tier_two, ref, "score_rows", matrix)
        return ScoreResponse(model=name, version=ref.version, alias=body.alias, scores=scores)

    # -- admin ---------------------------------------------------------------------------

    @api.post(
        "/v1/admin/models",
        response_model=AdminModelResponse,
        tags=["admin"],
        responses=_errors(401, 403, 404, 422, 503, 504),
        dependencies=[Depends(_bearer)],  # documents the bearer scheme; checked below
    )
    async def admin_models(
        self, body: AdminModelRequest, authorization: str | None = Header(None)
    ) -> AdminModelResponse:
        """Move (``version``) or re-resolve an alias; 200 once every replica serves it."""
        self._authorize(authorization)
        started = time.monotonic()
        features = self._project(body.project)
        try:
            check_model(body.project, features, body.tier, body.model)
        except RouteNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        name = model_name(body.project, body.tier, body.model)
        try:
            moved = await self.directory.move.remote(name, body.alias, body.version)
        except ModelNotFound as exc:
            raise HTTPException(404, str(_cause(exc))) from exc
        except RegistryUnavailable as exc:
            raise HTTPException(503, str(_cause(exc))) from exc
        synced = await self.directory.wait_synced.remote(moved["generation"], HOT_SWAP_TIMEOUT_S)
        if synced["pending"]:
            raise HTTPException(
                504,
                f"{name}@{body.alias} now points at version {moved['ref']['version']} in the "
                f"registry, but replicas {synced['pending']} did not confirm within "
                f"{HOT_SWAP_TIMEOUT_S:.0f} s; they pick it up by polling",
            )
        return AdminModelResponse(
            name=name,
            alias=body.alias,
            version=moved["ref"]["version"],
            previous_version=moved["previous_version"],
            replicas=synced["replicas"],
            seconds=round(time.monotonic() - started, 3),
        )

    async def _attach_attributes(
        self, project: str, items: list[ItemScore], names: list[str]
    ) -> None:
        """Each item's asked-for attributes from the item data (one read for all of them)."""
        from twotier.items import ItemDataError, read_items

        ids = [i.item_id for i in items]
        try:
            found = await asyncio.to_thread(read_items, self.settings, project, ids)
        except ItemDataError as exc:
            raise HTTPException(503, str(exc)) from exc
        for item in items:
            data = found.get(item.item_id)
            held = data.attributes if data is not None else {}
            item.attributes = {n: held[n] for n in names if n in held}

    def _authorize(self, authorization: str | None) -> None:
        if not authorization:
            raise HTTPException(
                401,
                "missing admin token: send 'Authorization: Bearer <serving.admin_token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = authorization.partition(" ")
        expected = self.serving.admin_token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPException(403, "wrong admin token (see serving.admin_token)")

    # -- helpers -------------------------------------------------------------------------

    def _project(self, project: str) -> ProjectFeatures:
        try:
            return self.settings.project_features(check_project(project))
        except (ConfigError, ValueError) as exc:
            raise HTTPException(404, str(exc)) from exc

    def _cap(self, what: str, count: int) -> None:
        cap = self.serving.max_candidates
        if count > cap:
            raise HTTPException(
                413,
                f"{what}: {count} is more than serving.max_candidates={cap}; send at most {cap}",
            )

    def _route(self, project: str, features: ProjectFeatures, user_id: str, body: Any) -> Route:
        try:
            return route(
                project,
                features,
                user_id,
                body.experiment,
                body.group,
                body.alias,
                generations=self.generations,
            )
        except RouteNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    @staticmethod
    def _tier_two_model(project: str, features: ProjectFeatures, model: str | None) -> str:
        try:
            return tier_two_model(project, features, model)
        except RouteNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    async def _resolve(self, name: str, alias: str) -> ModelVersionRef:
        ref = self.aliases.get((name, alias))
        if ref is not None:
            return ref
        try:
            ref = ref_from_dict(await self.directory.resolve.remote(name, alias))
        except ModelNotFound as exc:
            raise HTTPException(404, str(_cause(exc))) from exc
        except RegistryUnavailable as exc:
            raise HTTPException(503, str(_cause(exc))) from exc
        self.aliases[name, alias] = ref
        return ref

    async def _tier_ref(
        self, project: str, tier: str, model: str, chosen: Route
    ) -> tuple[ModelVersionRef, ModelUsed]:
        """The version a tier serves on this route; a group alias falls back to champion."""
        name = model_name(project, tier, model)
        alias = chosen.alias
        try:
            ref = await self._resolve(name, alias)
        except HTTPException as exc:
            if exc.status_code != 404 or chosen.explicit_alias or alias == CHAMPION:
                raise
            ref = await self._resolve(name, CHAMPION)
            alias = CHAMPION
        used = ModelUsed(
            tier=tier,
            name=name,
            version=ref.version,
            alias=alias,
            requested_alias=chosen.alias,
            fallback=alias != chosen.alias,
        )
        return ref, used

    async def _call(
        self, host: DeploymentHandle, ref: ModelVersionRef, method: str, *args: Any
    ) -> Any:
        """Call a model host; a replica lost under the call is retried once, then 503."""
        handle = getattr(host.options(multiplexed_model_id=ref.model_id), method)
        try:
            try:
                return await handle.remote(*args)
            except REPLICA_LOST as exc:  # scoring is a read: another replica may answer
                logger.warning("%s: model host replica lost (%s); retrying once", ref.model_id, exc)
                return await handle.remote(*args)
        except REPLICA_LOST as exc:
            raise HTTPException(
                503,
                f"{ref.model_id}: the model host replica serving it was lost "
                f"({type(exc).__name__}) and none answered the retry; Serve is starting a "
                "new one, retry in a few seconds",
                headers={"Retry-After": "2"},
            ) from exc
        except ModelNotFound as exc:
            raise HTTPException(404, f"{ref.model_id} cannot be loaded: {_cause(exc)}") from exc
        except ModelLoadError as exc:
            raise HTTPException(422, str(_cause(exc))) from exc
        except ValueError as exc:  # bad ids, unknown request features, wrong widths
            raise HTTPException(422, str(_cause(exc))) from exc

    @staticmethod
    def _events(
        project: str,
        body: RecommendRequest,
        chosen: Route,
        tier_one: ModelUsed,
        tier_two: ModelUsed,
        request_id: str,
        items: list[ItemScore],
    ) -> list[Event]:
        now = int(time.time() * 1000)
        context = {
            **body.context,
            "request_id": request_id,
            "experiment": chosen.experiment or "",
            "group": chosen.group or "",
            "shuffle": str(chosen.shuffle),
            "tier1_model": f"{tier_one.name}/{tier_one.version}",
            "tier2_model": f"{tier_two.name}/{tier_two.version}",
        }
        return [
            Event(
                event_id=f"rec-{request_id}-{rank}",
                project=project,
                user_id=body.user_id,
                item_id=item.item_id,
                action=RECOMMENDATION_ACTION,
                value=float(item.score),
                ts=now,
                context={**context, "rank": str(rank)},
            )
            for rank, item in enumerate(items)
        ]

    async def _sync_forever(self) -> None:
        while True:
            try:
                answer = await self.directory.sync.remote(
                    self.replica, "ingress", self.generation, {}
                )
                if answer["generation"] != self.generation:
                    self.aliases = {
                        (e["name"], e["alias"]): ref_from_dict(e) for e in answer["entries"]
                    }
                    self.generation = answer["generation"]
            except Exception as exc:
                logger.warning("ingress %s: directory sync failed (%s)", self.replica, exc)
                await asyncio.sleep(1.0)


# -- building the application -------------------------------------------------------------

DEPLOYMENTS = ("Ingress", "ModelDirectory", "TierOneHost", "TierTwoHost")


def build(args: ServingArgs, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The application for ``args``; ``options`` per deployment name (e.g. replicas)."""
    options = options or {}
    unknown = sorted(set(options) - set(DEPLOYMENTS))
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}; the app has {list(DEPLOYMENTS)}")
    directory = ModelDirectory.options(**options.get("ModelDirectory", {})).bind(args.settings)
    tier_one = ModelHost.options(name="TierOneHost", **options.get("TierOneHost", {}))
    tier_two = ModelHost.options(name="TierTwoHost", **options.get("TierTwoHost", {}))
    # mypy sees the class under @serve.ingress, not the Deployment object Serve returns.
    ingress = Ingress.options(**options.get("Ingress", {}))  # type: ignore[attr-defined]
    application: Application = ingress.bind(
        tier_one.bind(directory, args.settings),
        tier_two.bind(directory, args.settings),
        directory,
        args.settings,
        args.log_recommendations,
    )
    return application


def build_app(args: ServingArgs) -> Application:
    """The serving application for ``args`` (a typed Serve application builder)."""
    return build(args)


app = build_app(ServingArgs())
