"""The serving app's pieces that need no cluster: imports, bodies, routing, the alias
directory, the byte-budget model cache, config (online features: test_feature_reader)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from twotier.events import KNOWN_ACTIONS, Event
from twotier.experiments import Experiment, ExperimentGroup, assign
from twotier.features.builtin import builtin_projects
from twotier.registry import ModelVersionRef
from twotier.serve_apps.alias_directory import AliasDirectory
from twotier.serve_apps.app import DEPLOYMENTS, ServingArgs, api, build
from twotier.serve_apps.model_cache import Loaded, ModelCache
from twotier.serve_apps.recommendation_log import RECOMMENDATION_ACTION
from twotier.serve_apps.routing import RouteNotFound, check_model, route, tier_two_model
from twotier.serve_apps.schemas import (
    AdminModelRequest,
    FirstTierResponse,
    ItemScore,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
)

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
import twotier.serve_apps.app as app
assert isinstance(app.app, Application), app.app
print("ok", sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "dagster"}))
"""


def test_serving_imports_without_pyspark_or_dagster() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok []"


# -- bodies ------------------------------------------------------------------------


def test_request_bodies_validate() -> None:
    assert RecommendRequest.model_validate({"user_id": "1"}).n == 10
    with pytest.raises(ValidationError, match="extra"):
        RecommendRequest.model_validate({"user_id": "1", "users": ["2"]})
    with pytest.raises(ValidationError, match="user_id"):
        RecommendRequest.model_validate({"user_id": ""})
    with pytest.raises(ValidationError, match="alias"):
        RecommendRequest.model_validate({"user_id": "1", "alias": "no spaces"})
    with pytest.raises(ValidationError, match="exactly one of 'rows'"):
        ScoreRequest.model_validate({"rows": [[1]], "features": [{"a": 1}]})
    admin = {"project": "p", "tier": "tier2", "model": "ranker", "alias": "champion"}
    assert AdminModelRequest.model_validate(admin).version is None
    with pytest.raises(ValidationError, match="tier"):
        AdminModelRequest.model_validate({**admin, "tier": "tier3"})
    with pytest.raises(ValidationError, match="version"):
        AdminModelRequest.model_validate({**admin, "version": "latest"})


def test_item_attributes_appear_only_when_asked_and_stay_documented() -> None:
    """No ``"attributes": null`` in answers that asked for none; null experiment/group stay."""
    served: dict[str, Any] = {
        "project": "p",
        "user_id": "1",
        "experiment": None,
        "group": None,
        "models": [],
    }
    first = FirstTierResponse(
        **served, candidates=[ItemScore(item_id="1", score=0.5)], cold_user=False
    )
    asked = RecommendResponse(
        **served,
        request_id="r",
        items=[
            ItemScore(item_id="1", score=0.5, attributes={"title": "Heat (1995)"}),
            ItemScore(item_id="2", score=0.25, attributes={}),
        ],
        candidates=2,
        seen_excluded=0,
        features_degraded=False,
        cold_user=False,
    )
    probe = FastAPI()
    probe.get("/first", response_model=FirstTierResponse)(lambda: first)
    probe.get("/asked", response_model=RecommendResponse)(lambda: asked)
    with TestClient(probe) as client:
        first_json = client.get("/first").json()
        asked_json = client.get("/asked").json()
    assert first_json["candidates"] == [{"item_id": "1", "score": 0.5}]
    assert first_json["experiment"] is None and first_json["group"] is None
    assert [i["attributes"] for i in asked_json["items"]] == [{"title": "Heat (1995)"}, {}]
    assert json.loads(first.model_dump_json())["candidates"][0] == {"item_id": "1", "score": 0.5}
    documented = api.openapi()["components"]["schemas"]["ItemScore"]
    assert "attributes" in documented["properties"]
    assert documented["required"] == ["item_id", "score"]


def test_recommendation_events_are_valid_events() -> None:
    assert RECOMMENDATION_ACTION in KNOWN_ACTIONS
    event = Event(
        event_id="rec-x-0",
        project="p",
        user_id="1",
        item_id="9",
        action=RECOMMENDATION_ACTION,
        value=0.7,
        ts=1,
        context={"rank": "0", "group": "control"},
    )
    assert Event.from_json(event.to_json()) == event


# -- routing -------------------------------------------------------------------------


def _experiment() -> Experiment:
    return Experiment(
        name="ab",
        salt="s",
        groups=(
            ExperimentGroup(name="control", share=0.5, alias="champion"),
            ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
        ),
    )


def test_route_uses_the_shared_assignment_and_overrides() -> None:
    plain = builtin_projects()["movielens"].model_copy(update={"experiments": ()})
    assert route("p", plain, "1") == route("p", plain, "1", alias=None)
    assert route("p", plain, "1").alias == "champion" and route("p", plain, "1").group is None
    assert route("p", plain, "1", alias="x").explicit_alias
    with pytest.raises(RouteNotFound, match="runs no experiment"):
        route("p", plain, "1", group="control")

    features = plain.model_copy(update={"experiments": (_experiment(),)})
    for user in map(str, range(40)):
        chosen = route("p", features, user)
        assert chosen.group == assign("p", _experiment(), user)
        assert chosen.alias == ("champion" if chosen.group == "control" else "challenger")
        assert not chosen.explicit_alias
    forced = route("p", features, "1", group="treatment")
    assert forced.alias == "challenger" and forced.group == "treatment"
    with pytest.raises(RouteNotFound, match="no group 'nope'"):
        route("p", features, "1", group="nope")
    with pytest.raises(RouteNotFound, match="no experiment 'nope'"):
        route("p", features, "1", experiment="nope")


def test_models_of_a_project() -> None:
    features = builtin_projects()["movielens"]
    assert tier_two_model("p", features, None) == "ranker"
    with pytest.raises(RouteNotFound, match="no tier-two model 'nope'"):
        tier_two_model("p", features, "nope")
    check_model("p", features, "tier1", "candidates")
    with pytest.raises(RouteNotFound, match="one tier-one model"):
        check_model("p", features, "tier1", "ranker")


# -- the alias directory ---------------------------------------------------------------


def _ref(name: str, version: str) -> ModelVersionRef:
    return ModelVersionRef(name, version, None, ())


def test_alias_directory_generations_acks_and_preloads() -> None:
    now = [0.0]
    book = AliasDirectory(live_s=5.0, clock=lambda: now[0])

    async def scenario() -> None:
        assert book.set("p.tier2.ranker", "champion", _ref("p.tier2.ranker", "1"))
        assert not book.set("p.tier2.ranker", "champion", _ref("p.tier2.ranker", "1"))
        assert book.set("p.tier1.candidates", "champion", _ref("p.tier1.candidates", "4"))
        assert book.generation == 2
        book.ack("ingress-a", "ingress", 2, {})
        book.ack("host-a", "host", 2, {"p.tier2.ranker/1": 100})
        assert book.pending(2) == []

        # A long poll returns when the table moves, not before.
        waiter = asyncio.create_task(book.wait_change(2, timeout_s=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        book.set("p.tier2.ranker", "champion", _ref("p.tier2.ranker", "2"))
        await asyncio.wait_for(waiter, 1)
        assert book.pending(3) == ["host-a", "ingress-a"]
        # The host held version 1, so it preloads version 2 (only what moved since 2).
        assert book.wanted({"p.tier2.ranker/1": 100}, since_generation=2) == ["p.tier2.ranker/2"]
        assert book.wanted({"p.tier2.ranker/1": 100}, since_generation=3) == []
        assert book.wanted({"q.tier2.ranker/1": 100}, since_generation=0) == []
        book.ack("ingress-a", "ingress", 3, {})
        assert book.pending(3) == ["host-a"]
        now[0] = 6.0  # host-a went silent: no longer awaited
        assert book.pending(3) == []
        assert book.drop("p.tier2.ranker", "champion") and book.generation == 4
        assert book.table() == {"p.tier1.candidates@champion": _ref("p.tier1.candidates", "4")}
        await book.wait_change(4, timeout_s=0.01)  # times out quietly

    asyncio.run(scenario())


def test_a_registry_read_older_than_a_move_never_reverts_it() -> None:
    book = AliasDirectory()
    ranker, candidates = ("p.tier2.ranker", "champion"), ("p.tier1.candidates", "champion")
    book.set(*ranker, _ref(ranker[0], "1"))
    book.set(*candidates, _ref(candidates[0], "4"))
    since = book.generation  # the poll starts reading the registry here ...
    book.set(*ranker, _ref(ranker[0], "3"))  # ... an admin move lands meanwhile ...
    read = {ranker[0]: {"champion": "1"}, candidates[0]: {"champion": "5"}}  # ... stale read
    assert book.changes(read, since) == ([], [(candidates, "5")])
    # A read begun after the move is trusted, including a deleted alias.
    assert book.changes({ranker[0]: {"champion": "2"}}, book.generation) == (
        [candidates],
        [(ranker, "2")],
    )


# -- the model cache -----------------------------------------------------------------------


def test_model_cache_keeps_models_within_the_byte_budget() -> None:
    sizes = {"a/1": 40, "b/1": 30, "c/1": 50, "huge/1": 500}
    calls: list[str] = []
    evicted: list[str] = []

    async def load(model_id: str) -> Loaded[str]:
        calls.append(model_id)
        await asyncio.sleep(0.01)
        if model_id == "bad/1":
            raise LookupError("no such version")
        return Loaded(f"model {model_id}", sizes[model_id])

    cache: ModelCache[str] = ModelCache(load, 100, on_evict=lambda m, _: evicted.append(m))

    async def scenario() -> None:
        assert await asyncio.gather(*(cache.get("a/1") for _ in range(5))) == ["model a/1"] * 5
        assert calls == ["a/1"]  # one load in flight per id
        await cache.get("b/1")
        await cache.get("a/1")  # a is now the most recently used
        await cache.get("c/1")  # 40 + 30 + 50 > 100: b (least recent) goes
        assert evicted == ["b/1"] and list(cache.loaded()) == ["a/1", "c/1"]
        assert cache.total_bytes == 90 <= cache.budget_bytes
        await cache.get("huge/1")  # bigger than the budget: served alone
        assert list(cache.loaded()) == ["huge/1"]
        await cache.get("b/1")
        assert list(cache.loaded()) == ["b/1"]
        with pytest.raises(LookupError):
            await cache.get("bad/1")
        assert "bad/1" not in cache
        assert cache.loads == 5 and cache.evictions == 4

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="budget"):
        ModelCache(load, 0)


# -- the application and its config file ----------------------------------------------------


def test_serving_args_and_deployment_options() -> None:
    args = ServingArgs.model_validate({"settings": {"serving": {"alias_poll_s": 2}}})
    assert isinstance(build(args, {"TierTwoHost": {"num_replicas": 2}}), Application)
    with pytest.raises(ValueError, match="unknown deployment"):
        build(args, {"Ranker": {}})
    with pytest.raises(ValidationError, match="extra"):
        ServingArgs.model_validate({"tracking_uri": "http://x"})


def test_config_file_is_a_valid_serve_config_with_typed_args() -> None:
    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.route_prefix == "/"
    assert schema.http_options.host == "127.0.0.1"
    module, attr = application.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    annotation = inspect.signature(builder).parameters["args"].annotation
    assert annotation is ServingArgs  # Serve validates `args` into it
    assert isinstance(builder(ServingArgs.model_validate(application.args)), Application)
    by_name = {d.name: d for d in application.deployments}
    assert set(by_name) == set(DEPLOYMENTS)
    for name in ("Ingress", "TierOneHost", "TierTwoHost"):  # autoscaling per deployment
        autoscaling = dict(by_name[name].autoscaling_config or {})
        assert autoscaling and autoscaling["min_replicas"] >= 1 <= autoscaling["max_replicas"]
    assert by_name["ModelDirectory"].num_replicas == 1
    for deployment in application.deployments:
        assert 0 < (deployment.ray_actor_options.num_cpus or 0) <= 0.5
