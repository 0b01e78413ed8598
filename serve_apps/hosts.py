"""The backend deployments: the alias directory and the model hosts of both tiers.

``ModelDirectory`` (one replica) owns alias → version for the application (see
``alias_directory``). ``ModelHost`` is bound twice, as ``TierOneHost`` and
``TierTwoHost``: each replica keeps ONNX sessions keyed by the multiplexed model id
``name/version`` within ``serving.model_memory_budget_bytes`` (``ModelCache``), and the
tier-two host reads online features (``FeatureReader``, item documents cached per entity)
next to the ranker that needs them.
"""

# No `from __future__ import annotations`: Ray Serve inspects these classes at runtime.

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

import twotier.registry as registry
from twotier.config import Settings, load_settings
from twotier.features.spec import CANDIDATE_FEATURES, CandidateSpec
from twotier.models.candidates import tier_one_candidates
from twotier.registry import ModelNotFound, ModelVersionRef
from twotier.serve_apps.alias_directory import AliasDirectory, RegistryUnavailable, is_not_found
from twotier.serve_apps.feature_reader import FeatureRead, FeatureReader, seen_mask
from twotier.serve_apps.loader import ModelLoadError, ServedModel, load_served_model
from twotier.serve_apps.model_cache import Loaded, ModelCache

logger = logging.getLogger("ray.serve")

LONG_POLL_S = 2.0
"""How long a replica's ``sync`` call waits for a change before answering anyway."""
REPLICA_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""Replicas talk to loopback services only, and a registry outage fails fast."""


def replica_settings(overrides: dict[str, Any]) -> Settings:
    """The settings of a replica: the stack's (``TWOTIER_*``, ``twotier.yaml``) + overrides."""
    return load_settings(**overrides)


def replica_name() -> str:
    """A stable id of the running replica."""
    return str(serve.get_replica_context().replica_id)


def _ref_dict(ref: ModelVersionRef) -> dict[str, Any]:
    return {
        "name": ref.name,
        "version": ref.version,
        "run_id": ref.run_id,
        "feature_names": list(ref.feature_names),
    }


def ref_from_dict(data: dict[str, Any]) -> ModelVersionRef:
    """The inverse of the directory's wire form of a version."""
    return ModelVersionRef(
        data["name"], data["version"], data["run_id"], tuple(data["feature_names"])
    )


# -- the alias directory ------------------------------------------------------------


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05, "runtime_env": {"env_vars": REPLICA_ENV}},
)
class ModelDirectory:
    """Alias → version from the MLflow registry, polled, moved on demand, broadcast."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        self.settings = replica_settings(settings)
        self.uri = self.settings.mlflow.uri
        self.book = AliasDirectory(live_s=5 * LONG_POLL_S)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    # -- resolution ----------------------------------------------------------

    async def _registry_resolve(self, name: str, alias: str) -> ModelVersionRef:
        try:
            return await asyncio.to_thread(registry.resolve, self.uri, name, alias)
        except ModelNotFound as exc:
            if is_not_found(exc):
                raise ModelNotFound(
                    f"no model {name!r} with alias {alias!r} in the registry at {self.uri}; "
                    "register the model or point the alias at a version"
                ) from None
            raise RegistryUnavailable(
                f"cannot resolve {name}@{alias}: the model registry at {self.uri} is "
                f"unavailable ({exc.__cause__}). Fix: check that the MLflow server is running"
            ) from None

    async def resolve(self, name: str, alias: str) -> dict[str, Any]:
        """``name@alias`` → the version (wire form), from the table or the registry.

        Raises:
            ModelNotFound: No such model or alias.
            RegistryUnavailable: The registry cannot be asked and nothing is known.
        """
        key = (name, alias)
        ref = self.book.entries.get(key)
        if ref is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                ref = self.book.entries.get(key)
                if ref is None:
                    ref = await self._registry_resolve(name, alias)
                    self.book.set(name, alias, ref)
        return _ref_dict(ref)

    async def move(self, name: str, alias: str, version: str | None) -> dict[str, Any]:
        """Point ``name@alias`` at ``version`` in MLflow (or re-read it), then broadcast.

        Returns:
            ``{"ref": ..., "previous_version": str | None, "generation": int}``.

        Raises:
            ModelNotFound: No such model, version, or (without a version) alias.
            RegistryUnavailable: The registry cannot be reached.
        """
        previous: str | None = None
        try:
            previous = (await self._registry_resolve(name, alias)).version
        except ModelNotFound:
            previous = None
        if version is not None:
            try:
                await asyncio.to_thread(registry.get_version, self.uri, name, version)
            except ModelNotFound as exc:
                if not is_not_found(exc):
                    raise RegistryUnavailable(
                        f"registry at {self.uri} unavailable: {exc}"
                    ) from None
                raise ModelNotFound(
                    f"model {name!r} has no version {version} in the registry at {self.uri}"
                ) from None
            await asyncio.to_thread(registry.set_alias, self.uri, name, alias, version)
        ref = await self._registry_resolve(name, alias)
        self.book.set(name, alias, ref)
        logger.info("admin: %s@%s -> %s (was %s)", name, alias, ref.version, previous)
        return {
            "ref": _ref_dict(ref),
            "previous_version": previous,
            "generation": self.book.generation,
        }

    # -- replicas ------------------------------------------------------------

    async def sync(
        self, replica: str, role: str, generation: int, loaded: dict[str, int]
    ) -> dict[str, Any]:
        """A replica's long poll: ack ``generation``, wait for a change, return the table."""
        self.book.ack(replica, role, generation, loaded)
        await self.book.wait_change(generation, LONG_POLL_S)
        self.book.ack(replica, role, generation, loaded)
        return {
            "generation": self.book.generation,
            "entries": [_ref_dict(r) | {"alias": a} for (_, a), r in self.book.entries.items()],
            "wanted": self.book.wanted(loaded, generation) if role == "host" else [],
        }

    async def wait_synced(self, generation: int, timeout_s: float) -> dict[str, Any]:
        """Wait until every live replica has applied ``generation`` (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        pending = self.book.pending(generation)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            pending = self.book.pending(generation)
        return {"pending": pending, "replicas": len(self.book.live())}

    async def status(self) -> dict[str, Any]:
        """The alias table and, per live replica, its role, generation and loaded models."""
        now = time.monotonic()
        return {
            "generation": self.book.generation,
            "aliases": {key: _ref_dict(ref) for key, ref in sorted(self.book.table().items())},
            "replicas": {
                replica: {
                    "role": state.role,
                    "generation": state.generation,
                    "seconds_since_sync": round(now - state.last_seen, 3),
                    "loaded": state.loaded,
                }
                for replica, state in sorted(self.book.live().items())
            },
        }

    # -- polling -------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serving.alias_poll_s)
            try:
                await self.poll()
            except Exception as exc:  # the registry may be down: keep serving what we know
                logger.warning("alias poll failed (%s); keeping the known versions", exc)
            self.book.forget_gone()

    async def poll(self) -> int:
        """Re-read every known alias from the registry; returns how many changed."""
        names = sorted({name for name, _ in self.book.entries})
        if not names:
            return 0
        since = self.book.generation
        aliases = await asyncio.to_thread(_registered_aliases, self.uri, names)
        gone, moved = self.book.changes(aliases, since)
        changed = sum(self.book.drop(*key) for key in gone)
        for key, version in moved:
            new = await asyncio.to_thread(registry.get_version, self.uri, key[0], version)
            if not self.book.moved_since(key, since):  # no admin move while we read
                changed += self.book.set(*key, new)
        return changed


def _registered_aliases(uri: str, names: list[str]) -> dict[str, dict[str, str]]:
    """``name -> {alias: version}`` of ``names``, one registry search per project."""
    client = registry.client(uri)
    projects = sorted({name.split(".", 1)[0] for name in names})
    wanted = set(names)
    out: dict[str, dict[str, str]] = {}
    for project in projects:
        token = None
        while True:
            page = client.search_registered_models(
                filter_string=f"name LIKE '{project}.%'", max_results=500, page_token=token
            )
            for model in page:
                if model.name in wanted:
                    out[model.name] = {a: str(v) for a, v in (model.aliases or {}).items()}
            token = page.token
            if not token:
                break
    return out


# -- the model hosts ------------------------------------------------------------------


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": REPLICA_ENV}},
)
class ModelHost:
    """ONNX sessions of one tier within a byte budget, chosen by the multiplexed model id."""

    async def __init__(  # type: ignore[misc]  # Serve supports async constructors
        self, directory: DeploymentHandle, settings: dict[str, Any]
    ) -> None:
        self.settings = replica_settings(settings)
        self.uri = self.settings.mlflow.uri
        self.directory = directory
        self.replica = replica_name()
        # Serve tags every metric with its deployment (TierOneHost / TierTwoHost) and replica.
        self._evictions = metrics.Counter(
            "twotier_model_evictions",
            description="Models evicted to keep a replica within its model memory budget.",
        )
        self._loads = metrics.Counter(
            "twotier_model_loads", description="Models loaded from the registry."
        )
        self._bytes = metrics.Gauge(
            "twotier_model_bytes", description="Bytes of ONNX models held by a replica."
        )
        self._bytes.set(0)  # exported from the start, not only after the first load
        self.cache: ModelCache[ServedModel] = ModelCache(
            self._load,
            self.settings.serving.model_memory_budget_bytes,
            on_evict=lambda _, __: self._evictions.inc(),
        )
        self._reader: FeatureReader | None = None
        self._feature_metrics: FeatureCacheMetrics | None = None
        self._sync = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _load(self, model_id: str) -> Loaded[ServedModel]:
        served = await asyncio.to_thread(load_served_model, self.uri, model_id)
        self._loads.inc()
        return Loaded(served, served.nbytes)

    async def _model(self) -> ServedModel:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            raise ValueError("no multiplexed model id on the request; call with .options(...)")
        model = await self.cache.get(model_id)
        self._bytes.set(self.cache.total_bytes)
        return model

    @property
    def reader(self) -> FeatureReader:
        """The online-feature reader of this replica (tier two), made on first use."""
        if self._reader is None:
            self._reader = FeatureReader(
                serving_features(self.settings), self.settings.serving.feature_cache_ttl_s
            )
            self._feature_metrics = FeatureCacheMetrics()
        return self._reader

    # -- scoring ---------------------------------------------------------------

    async def candidates(
        self, user_id: str, k: int, exclude: list[str], popular: int = 0
    ) -> dict[str, Any]:
        """Tier one: the ``k`` best items for ``user_id`` not in ``exclude``, best first.

        Args:
            user_id: The user.
            k: Tier one's items.
            exclude: Items never to return (seen).
            popular: Then up to this many of the fallback row's (recent popularity) not
                already there (``twotier.models.candidates.merge_candidates``).

        Returns:
            ``{"pairs": [(item_id, score), ...], "features": {...}, "cold": bool}``;
            ``features``: per candidate, ``CANDIDATE_FEATURES`` (tier one's score and rank,
            the rank in recent popularity) for the ranker; ``cold``: the model never saw
            the user, so tier one's items are its fallback.
        """
        model = await self._model()
        session = model.tier_one
        if session is None:
            raise ModelLoadError(f"{model.model_id} is not a tier-one model")
        mix = CandidateSpec(tier_one=k, popular=popular)
        found = tier_one_candidates(session, [user_id], mix, {user_id: set(exclude)})[user_id]
        return {
            "pairs": list(zip(found.items, found.scores.tolist(), strict=True)),
            "features": found.request_features(CANDIDATE_FEATURES),
            "cold": found.cold,
        }

    async def rank(
        self,
        project: str,
        user_id: str,
        candidates: list[str],
        request: dict[str, float],
        per_candidate: dict[str, list[float]] | None = None,
        log_features: bool = False,
    ) -> dict[str, Any]:
        """Tier two: online features of ``candidates`` (cached), then the ranker's scores.

        Args:
            project: The project.
            user_id: The user.
            candidates: The item ids to score, one matrix row each.
            request: Request-feature values.
            per_candidate: Tier one's per-candidate features (``CANDIDATE_FEATURES``).
            log_features: Also return the input matrix, its columns and read time (a
                request sampled by ``serving.feature_log_fraction``).

        Returns:
            ``{"scores": [...], "seen": [bool, ...], "degraded": bool}`` in candidate order;
            with ``log_features`` also ``"features"`` (float32 array, one row per
            candidate), ``"columns"`` (``spec.columns()``) and ``"features_ts"`` (ms).

        Raises:
            ModelLoadError: The version was registered without a feature spec.
            ValueError: An unknown request feature or a bad id.
        """
        model = await self._model()
        if model.tier_two is None:
            raise ModelLoadError(f"{model.model_id} is not a tier-two model")
        if model.spec is None:
            raise ModelLoadError(
                f"{model.model_id} was registered without a model-features spec, so its input "
                "cannot be built from online features; register it with spec=... (or score "
                "raw rows with POST /v1/{project}/score)"
            )
        reader = self.reader
        # Tier one's score and rank of each candidate, for rankers that read them.
        wanted = model.spec.model.candidate_features()
        values: dict[str, Any] = dict(request)
        values |= {n: v for n, v in (per_candidate or {}).items() if n in wanted}
        # A sampled request pins the read time, so its logged recency features can be
        # recomputed offline at exactly that time.
        now_ms = int(time.time() * 1000) if log_features else None
        read = await asyncio.to_thread(
            reader.matrix, model.spec, project, user_id, candidates, values, now_ms
        )
        if self._feature_metrics is not None:
            self._feature_metrics.record(read, len(reader.cache))
        scores = model.tier_two.predict(read.matrix)
        answer = {
            "scores": scores.tolist(),
            "seen": seen_mask(model.spec, read.matrix).tolist(),
            "degraded": read.degraded,
        }
        if log_features:
            answer |= {
                "features": read.matrix,
                "columns": model.spec.columns(),
                "features_ts": now_ms,
            }
        return answer

    async def score_rows(self, matrix: np.ndarray) -> list[float]:
        """Raw rows in the model's feature order → scores (``/score``)."""
        model = await self._model()
        if model.tier_two is None:
            raise ModelLoadError(
                f"{model.model_id} is a tier-one model; raw rows score tier-two models only"
            )
        return [float(s) for s in model.tier_two.predict(matrix)]

    async def feature_names(self) -> list[str]:
        """The input columns of the model named by the request."""
        model = await self._model()
        if model.spec is not None:
            return model.spec.columns()
        return list(model.ref.feature_names)

    # -- keeping up with aliases -----------------------------------------------

    async def _sync_forever(self) -> None:
        generation = 0
        while True:
            try:
                answer = await self.directory.sync.remote(
                    self.replica, "host", generation, self.cache.loaded()
                )
                for model_id in answer["wanted"]:  # preload new versions of held models
                    with contextlib.suppress(Exception):
                        await self.cache.get(model_id)
                generation = answer["generation"]
            except Exception as exc:
                logger.warning("model host %s: directory sync failed (%s)", self.replica, exc)
                await asyncio.sleep(1.0)


class FeatureCacheMetrics:
    """The tier-two host's entity-cache metrics, exported by Ray with Serve's own."""

    STALENESS_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]
    """Seconds; the cache never serves a document older than ``feature_cache_ttl_s``."""

    def __init__(self) -> None:
        self.hits = metrics.Counter(
            "twotier_feature_cache_hits",
            description="Item feature documents served from a replica's entity cache.",
        )
        self.misses = metrics.Counter(
            "twotier_feature_cache_misses",
            description="Item feature documents the entity cache lacked (read from the store).",
        )
        self.entries = metrics.Gauge(
            "twotier_feature_cache_entries",
            description="Item feature documents held by a replica's entity cache.",
        )
        self.entries.set(0)
        self.staleness = metrics.Histogram(
            "twotier_feature_cache_staleness_s",
            description="Per request with cache hits: age of the oldest cached document it used.",
            boundaries=self.STALENESS_BOUNDARIES,
        )

    def record(self, read: FeatureRead, entries: int) -> None:
        """Count one request's hits and misses, and observe its oldest cached document."""
        if read.cache_hits:
            self.hits.inc(read.cache_hits)
        if read.cache_misses:
            self.misses.inc(read.cache_misses)
        if read.oldest_age_s is not None:
            self.staleness.observe(read.oldest_age_s)
        self.entries.set(entries)


def serving_features(settings: Settings) -> Any:
    """``OnlineFeatures`` with short store timeouts: a dead store costs 1.5 s, not 10."""
    from twotier.features.online import OnlineFeatures

    if settings.online_store.type == "mongodb":
        from twotier.online_store.mongodb import MongoDBOnlineStore

        store = MongoDBOnlineStore.from_settings(
            settings, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500, socketTimeoutMS=5000
        )
        return OnlineFeatures(settings, store)
    return OnlineFeatures(settings)
