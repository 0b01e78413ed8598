"""One registered version, from the MLflow registry into an ONNX Runtime session.

Nothing is unpickled: the artifact is an ONNX graph (``mlflow.onnx`` format), opened by
``twotier.models.tier_one.TierOneSession`` (tier one) or ``OnnxModel`` (tier two, with the
``ModelFeatureSpec`` logged beside it). ``mlflow.onnx`` stores tensors of 1 kB and more as
ONNX **external data** (files beside ``model.onnx``), so a loader must read the whole
artifact folder, never the ``.onnx`` file alone. A model over protobuf's 2 GB limit
cannot become one byte string at all: ONNX Runtime opens it from the path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

import twotier.registry as registry
from twotier.errors import TwotierError
from twotier.features.spec import ModelFeatureSpec
from twotier.models.tier_one import TierOneSession
from twotier.registry import ModelNotFound, ModelVersionRef
from twotier.serve_apps.onnx_model import OnnxModel

logger = logging.getLogger("ray.serve")

PROTOBUF_LIMIT_BYTES = 2**31 - 1
"""A serialized ONNX ModelProto cannot be larger than this (protobuf's hard limit)."""


class ModelLoadError(TwotierError):
    """A registered version exists but cannot be served; the message names the fix."""


@dataclass
class ServedModel:
    """One exact version, open for scoring.

    Attributes:
        ref: The registered version.
        tier: ``tier1`` or ``tier2`` (from the model name ``<project>.<tier>.<model>``).
        nbytes: Size of the ONNX graph plus its external data files, charged against
            the replica's model memory budget.
        tier_one: The candidate generator, for tier one.
        tier_two: The ranker, for tier two.
        spec: The model-features spec stored with a tier-two version (None if it was
            registered without one: then only raw feature rows can be scored).
    """

    ref: ModelVersionRef
    tier: str
    nbytes: int
    tier_one: TierOneSession | None = None
    tier_two: OnnxModel | None = None
    spec: ModelFeatureSpec | None = None
    _keep: object = field(default=None, repr=False)

    @property
    def model_id(self) -> str:
        return self.ref.model_id


def parse_model_id(model_id: str) -> tuple[str, str, str]:
    """``<project>.<tier>.<model>/<version>`` → ``(name, tier, version)``.

    Raises:
        ValueError: The id has another shape.
    """
    name, sep, version = model_id.rpartition("/")
    parts = name.split(".")
    if not sep or len(parts) != 3 or not all(parts) or not version.isdigit():
        raise ValueError(
            f"model id {model_id!r} is not '<project>.<tier>.<model>/<version>' "
            "(e.g. 'movielens.tier2.ranker/3')"
        )
    return name, parts[1], version


def onnx_files_size(path: Path) -> int:
    """Bytes of the ONNX file at ``path`` plus every external data file it refers to."""
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        ExternalDataInfo(t).location for t in _initializers(proto.graph) if uses_external_data(t)
    }
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


def _initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.t.ByteSize():
                tensors.append(attribute.t)
            for sub in [attribute.g, *attribute.graphs]:
                if sub.ByteSize():
                    tensors.extend(_initializers(sub))
    return tensors


def open_onnx(
    path: Path,
    tier: str,
    model_id: str,
    feature_names: tuple[str, ...] = (),
    in_memory_limit_bytes: int = PROTOBUF_LIMIT_BYTES,
) -> tuple[TierOneSession | OnnxModel, int]:
    """Open the ONNX file at ``path`` (external data beside it) as a session of ``tier``.

    Models up to ``in_memory_limit_bytes`` are read into memory with their external
    data (the folder may be deleted afterwards); larger tier-two models are opened from
    the path, so the folder must outlive the session.

    Returns:
        The session and the model's size in bytes.

    Raises:
        ModelLoadError: A tier-one model over the limit (``TierOneSession`` takes one
            serialized graph), or an unknown tier.
    """
    nbytes = onnx_files_size(path)
    if tier not in ("tier1", "tier2"):
        raise ModelLoadError(f"{model_id}: unknown tier {tier!r}; names are <project>.tier1|2.<m>")
    if nbytes > in_memory_limit_bytes:
        if tier == "tier1":
            raise ModelLoadError(
                f"{model_id} is {nbytes} bytes, over the {in_memory_limit_bytes}-byte in-memory "
                "limit; TierOneSession opens one serialized graph, so shrink the catalogue "
                "embedding (fewer factors, float16) or shard the catalogue across models"
            )
        return OnnxModel(path, feature_names, model_id), nbytes
    proto = onnx.load(str(path))  # reads the external data files beside it
    if tier == "tier1":
        return TierOneSession(proto), nbytes
    return OnnxModel(proto.SerializeToString(), feature_names, model_id), nbytes


def load_served_model(
    tracking_uri: str, model_id: str, in_memory_limit_bytes: int = PROTOBUF_LIMIT_BYTES
) -> ServedModel:
    """Download ``name/version`` from the registry and open it (blocking).

    Raises:
        ValueError: ``model_id`` is not ``<project>.<tier>.<model>/<version>``.
        ModelNotFound: The version or its ONNX artifact does not exist.
        ModelLoadError: The artifact cannot be opened as a model of its tier.
    """
    name, tier, version = parse_model_id(model_id)
    ref = registry.get_version(tracking_uri, name, version)
    folder = Path(tempfile.mkdtemp(prefix="twotier-model-"))
    try:
        import mlflow

        # `models:/` URIs resolve through the process-wide registry URI.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}",
                dst_path=str(folder),
                tracking_uri=tracking_uri,
            )
        except mlflow.exceptions.MlflowException as exc:
            raise ModelNotFound(f"cannot download models:/{name}/{version}: {exc}") from exc
        files = sorted(Path(path).rglob("*.onnx"))
        if not files:
            raise ModelNotFound(f"models:/{name}/{version} holds no .onnx file")
        try:
            session, nbytes = open_onnx(
                files[0], tier, model_id, ref.feature_names, in_memory_limit_bytes
            )
        except (ModelLoadError, ModelNotFound):
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{model_id}: cannot open its ONNX graph ({type(exc).__name__}: {exc}); "
                "register a graph exported by twotier.models"
            ) from exc
        spec = registry.load_spec(tracking_uri, ref) if tier == "tier2" else None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    served = ServedModel(ref=ref, tier=tier, nbytes=nbytes, spec=spec)
    if isinstance(session, TierOneSession):
        served.tier_one = session
    else:
        served.tier_two = session
    if nbytes > in_memory_limit_bytes:  # opened from the path: keep the folder while in use
        served._keep = weakref.finalize(served, shutil.rmtree, folder, True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("loaded %s (%s, %d bytes)", model_id, tier, nbytes)
    return served
