"""The scoring app's pieces that need no cluster: imports, request validation, alias cache."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from twotier.registry import ModelNotFound, ModelVersionRef
from twotier.serve_apps.alias_cache import AliasCache, RegistryUnavailable
from twotier.serve_apps.scoring import ScoreRequest, ScoringArgs

REPO = Path(__file__).resolve().parents[2]

_BLOCK_AND_IMPORT = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "dagster"):
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Block())
from ray.serve import Application
import twotier.serve_apps.deploy
import twotier.serve_apps.scoring as scoring
assert isinstance(scoring.app, Application), scoring.app
assert isinstance(scoring.build_app(scoring.ScoringArgs(tracking_uri="http://x")), Application)
print("ok", sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "dagster"}))
"""


def test_serving_imports_without_pyspark_or_dagster() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok []"


def test_score_request_needs_exactly_one_input() -> None:
    assert ScoreRequest.model_validate({"rows": [[1, 2]]}).alias == "champion"
    assert ScoreRequest.model_validate({"features": [{"a": 1}]}).tier == "tier2"
    with pytest.raises(ValidationError, match="exactly one of 'rows'"):
        ScoreRequest.model_validate({"rows": [[1]], "features": [{"a": 1}]})
    with pytest.raises(ValidationError, match="exactly one of 'rows'"):
        ScoreRequest.model_validate({"model": "ranker"})
    with pytest.raises(ValidationError, match="rows"):
        ScoreRequest.model_validate({"rows": [["high"]]})
    with pytest.raises(ValidationError, match="tier"):
        ScoreRequest.model_validate({"tier": "Tier 2", "rows": [[1]]})


def test_scoring_args_are_typed() -> None:
    args = ScoringArgs.model_validate({"tracking_uri": "http://h:1", "alias_cache_ttl_s": 2})
    assert args.alias_cache_ttl_s == 2.0
    with pytest.raises(ValidationError, match="max_models_per_replica"):
        ScoringArgs.model_validate({"tracking_uri": "http://x", "max_models_per_replica": 0})
    with pytest.raises(ValidationError, match="extra"):
        ScoringArgs.model_validate({"tracking_uri": "http://x", "ttl": 3})


class _Registry:
    """A registry stand-in in memory: alias table plus an 'up' switch and a call count."""

    def __init__(self) -> None:
        self.aliases = {("p.tier2.ranker", "champion"): "1"}
        self.up = True
        self.calls = 0

    def resolve(self, name: str, alias: str) -> ModelVersionRef:
        self.calls += 1
        if not self.up:
            cause = MlflowException("connection refused", error_code=INTERNAL_ERROR)
            raise ModelNotFound("unreachable") from cause
        if (name, alias) not in self.aliases:
            cause = MlflowException("alias not found", error_code=INVALID_PARAMETER_VALUE)
            raise ModelNotFound(f"{name}@{alias}") from cause
        return ModelVersionRef(name, self.aliases[name, alias], None, ("a",))


def test_alias_cache_ttl_hot_swap_and_outage() -> None:
    reg = _Registry()
    now = [0.0]
    cache = AliasCache(reg.resolve, ttl_s=5.0, clock=lambda: now[0])

    async def get(alias: str = "champion") -> str:
        return (await cache.get("p.tier2.ranker", alias)).version

    async def scenario() -> None:
        assert await asyncio.gather(*(get() for _ in range(10))) == ["1"] * 10
        assert reg.calls == 1  # one lookup in flight per key
        reg.aliases["p.tier2.ranker", "champion"] = "2"
        now[0] = 4.9
        assert await get() == "1"  # still within the TTL
        now[0] = 5.1
        assert await get() == "2"  # re-resolved after the TTL
        reg.up = False
        now[0] = 20.0
        assert await get() == "2"  # registry down: last known version keeps serving
        calls = reg.calls
        assert await get() == "2"
        assert reg.calls == calls  # and the registry is retried once per TTL, not per request
        with pytest.raises(RegistryUnavailable, match="registry is unavailable"):
            await get("challenger")  # nothing cached for this one
        reg.up = True
        with pytest.raises(ModelNotFound):
            await get("challenger")

    asyncio.run(scenario())


def test_config_file_is_a_valid_serve_config_with_typed_args() -> None:
    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.route_prefix == "/"
    assert schema.http_options.host == "127.0.0.1"
    module, attr = application.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    annotation = inspect.signature(builder).parameters["args"].annotation
    assert annotation is ScoringArgs  # Serve validates `args` into it
    args = ScoringArgs.model_validate(application.args)
    assert isinstance(builder(args), Application)
    for deployment in application.deployments:
        assert 0 < (deployment.ray_actor_options.num_cpus or 0) <= 0.5
