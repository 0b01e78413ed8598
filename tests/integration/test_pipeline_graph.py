"""The per-project asset graph in process, on real Kafka, MLflow and an embedded chdb.

Kafka → events_offline (data checks) → feature_snapshots → monthly training sets (PIT)
→ tier one (ALS, ONNX top-k) → tier two (XGBoost, ONNX) → promotion → serving admin call
(a tiny FastAPI app of this test on loopback). Then: a failing ERROR check keeps the
alias where it was, and with normal thresholds it moves even when serving is down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.infra.service import Service
from twotier.naming import model_name
from twotier.pipelines.materialize import materialization_metadata, materialize_project
from twotier.pipelines.resources.serving import ServingResource
from twotier.registry import client, load_spec, resolve
from twotier.replay import replay_movielens

PROJECT = "pipe_graph"
RATINGS = 12000
FIRST_MONTH, LAST_MONTH = "1996-03-01", "2000-12-01"
TOKEN = "graph-test-token"
TIER1 = model_name(PROJECT, "tier1", "candidates")
TIER2 = model_name(PROJECT, "tier2", "ranker")


class FakeServing:
    """A real HTTP server on loopback that answers the admin endpoint and records calls."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post("/v1/admin/models")
        def load(body: dict[str, Any], authorization: str | None = Header(None)) -> dict[str, Any]:
            if authorization is None:
                raise HTTPException(401, "no token")
            if authorization != f"Bearer {TOKEN}":
                raise HTTPException(403, "wrong token")
            self.calls.append(body)
            name = f"{body['project']}.{body['tier']}.{body['model']}"
            return {"name": name, "alias": body["alias"], "version": body["version"]}

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServing:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake serving did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def graph_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The test stack with an offline store of this module and the test project declared."""
    data = tmp_path_factory.mktemp("pipeline-graph") / "offline"
    return with_offline_store(settings, data, {PROJECT: settings.project_features("movielens")})


@pytest.fixture(scope="module")
def fake_serving(settings: Settings) -> Iterator[FakeServing]:
    port = settings.kafka.port + 50  # inside this stack's block of ports
    with FakeServing(port) as server:
        yield server


@pytest.fixture(scope="module")
def first_run(
    graph_settings: Settings,
    kafka: Service,
    mlflow_server: Service,
    online_server: Service,  # items_offline copies the item data replay loads there
    movielens: Path,
    fake_serving: FakeServing,
) -> dg.ExecuteInProcessResult:
    replay_movielens(graph_settings, PROJECT, movielens, limit=RATINGS)
    started = time.perf_counter()
    result = materialize_project(
        graph_settings,
        PROJECT,
        partition_range=(FIRST_MONTH, LAST_MONTH),
        resources={"serving": ServingResource(url=fake_serving.url, admin_token=TOKEN)},
    )
    print(f"\nwhole graph in {time.perf_counter() - started:.1f}s")
    return result


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    return {
        f"{e.asset_key.path[-1]}:{e.check_name}": (e.passed, e.severity.value)
        for e in result.get_asset_check_evaluations()
    }


def test_whole_graph_registers_both_tiers_and_promotes_them(
    first_run: dg.ExecuteInProcessResult, graph_settings: Settings, fake_serving: FakeServing
) -> None:
    assert first_run.success
    checks = _checks(first_run)
    assert checks["events_offline:events_ts_range"] == (True, "ERROR")
    assert checks["events_offline:events_known_actions"] == (True, "WARN")
    for check in ("parity", "auc_floor"):
        assert checks[f"tier2_ranker:{check}"] == (True, "ERROR"), checks
    # 12,000 ratings leave a handful of known hold-out users: the gate says it cannot
    # decide (a WARN, not a pass) and promotion goes on.
    assert checks["tier2_ranker:beats_popularity"] == (False, "WARN"), checks
    assert checks["tier2_ranker:recall_vs_popularity"][1] == "WARN"
    assert checks["tier1_candidates:parity"] == (True, "ERROR")

    tier1 = materialization_metadata(first_run, PROJECT, "tier1_candidates")
    tier2 = materialization_metadata(first_run, PROJECT, "tier2_ranker")
    uri = graph_settings.mlflow.uri
    assert resolve(uri, TIER1, "champion").version == tier1["version"]
    assert resolve(uri, TIER2, "champion").version == tier2["version"]

    # Training sets: monthly partitions with rows in every month of the slice.
    sets = materialization_metadata(first_run, PROJECT, "training_set_tier2_ranker")
    by_month = sets["rows_by_partition"]
    assert isinstance(by_month, dict) and min(by_month) == "1996-03-01"
    assert sum(by_month.values()) == sets["rows"] == RATINGS

    # One MLflow run per tier: params, hold-out metrics vs popularity, plots, the spec.
    c = client(uri)
    run2 = c.get_run(str(tier2["run_id"]))
    metrics = run2.data.metrics
    for key in ("ndcg_at_10", "recall_at_100"):
        assert f"two_tier_{key}" in metrics and f"popularity_{key}" in metrics
    assert 0.55 <= metrics["auc"] <= 1.0
    assert metrics["parity_max_abs_diff"] <= 1e-4
    assert run2.data.params["n_estimators"] == "60"
    artifacts = {a.path for a in c.list_artifacts(run2.info.run_id, "plots")}
    assert artifacts == {"plots/feature_importance.png", "plots/holdout_auc_by_round.png"}
    png = Path(c.download_artifacts(run2.info.run_id, "plots/feature_importance.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    spec = load_spec(uri, resolve(uri, TIER2, "champion"))
    assert spec == graph_settings.project_features(PROJECT).model_spec("ranker")
    version = c.get_model_version(TIER2, str(tier2["version"]))
    assert version.tags["twotier.tier"] == "tier2"
    # A named run that links back to Dagster, and a model card on the version.
    assert run2.info.run_name.startswith(f"{PROJECT}.tier2.ranker champion ")
    assert run2.data.tags["dagster.run_id"] == first_run.run_id
    assert run2.data.tags["dagster.run_url"].endswith(f"/runs/{first_run.run_id}")
    card = str(version.description)
    assert "hold-out AUC" in card and "training data:" in card
    by_round = sorted(
        m.step for m in c.get_metric_history(run2.info.run_id, "holdout_auc_by_round")
    )
    assert 2 <= len(by_round) <= 30 and by_round[0] == 1 and by_round[-1] == 60
    assert str(tier2["mlflow_run"]).endswith(f"/runs/{run2.info.run_id}")
    assert run2.data.tags["twotier.alias"] == "champion"

    run1 = c.get_run(str(tier1["run_id"]))
    assert "tier_one_recall_at_100" in run1.data.metrics
    assert "popularity_recall_at_100" in run1.data.metrics
    assert "ranker.two_tier_ndcg_at_10" in run1.data.metrics  # both tiers together
    assert {a.path for a in c.list_artifacts(run1.info.run_id, "plots")} == {
        "plots/tier1_recall_at_k.png"
    }
    version1 = c.get_model_version(TIER1, str(tier1["version"]))
    assert version1.tags["twotier.tier"] == "tier1"
    assert "NDCG@10: tier one" in str(version1.description)

    # Promotion told serving once per model, with the token, and recorded it.
    promoted = materialization_metadata(first_run, PROJECT, "promotion")
    assert promoted["deployment_status"] == "deployed"
    assert {(c["tier"], c["model"], c["alias"], c["version"]) for c in fake_serving.calls} == {
        ("tier1", "candidates", "champion", tier1["version"]),
        ("tier2", "ranker", "champion", tier2["version"]),
    }


def test_failing_error_check_blocks_promotion_then_normal_thresholds_promote(
    first_run: dg.ExecuteInProcessResult, graph_settings: Settings, settings: Settings
) -> None:
    assert first_run.success
    uri = graph_settings.mlflow.uri
    before = {name: resolve(uri, name, "champion").version for name in (TIER1, TIER2)}
    models_only = ["tier1_candidates", "tier2_ranker", "promotion"]
    down = ServingResource(url=f"http://127.0.0.1:{settings.kafka.port + 51}", admin_token=TOKEN)

    blocked = materialize_project(
        graph_settings,
        PROJECT,
        selection=models_only,
        run_config={"ops": {f"{PROJECT}__tier2_ranker": {"config": {"auc_floor": 0.999}}}},
        resources={"serving": down},
        raise_on_error=False,
    )
    assert not blocked.success
    checks = _checks(blocked)
    assert checks["tier2_ranker:auc_floor"] == (False, "ERROR")
    new = materialization_metadata(blocked, PROJECT, "tier2_ranker")
    assert int(str(new["version"])) > int(before[TIER2])  # registered...
    with pytest.raises(KeyError):
        materialization_metadata(blocked, PROJECT, "promotion")  # ...but not promoted
    assert {name: resolve(uri, name, "champion").version for name in (TIER1, TIER2)} == before

    promoted = materialize_project(
        graph_settings, PROJECT, selection=models_only, resources={"serving": down}
    )
    assert promoted.success
    tier2 = materialization_metadata(promoted, PROJECT, "tier2_ranker")
    assert resolve(uri, TIER2, "champion").version == tier2["version"] != before[TIER2]
    meta = materialization_metadata(promoted, PROJECT, "promotion")
    assert meta["deployment_status"] == "serving not told"  # serving down: still promoted
    deployment = meta["deployment"]
    assert isinstance(deployment, dict) and "not reachable" in deployment["problems"][0]
    moved = meta["moved"]
    assert isinstance(moved, dict) and moved[f"{TIER2}@champion"]["previous"] == before[TIER2]


def test_a_ranker_trains_on_one_ab_groups_rows(
    first_run: dg.ExecuteInProcessResult, graph_settings: Settings, settings: Settings
) -> None:
    """experiment_training_sets feeds tier two: train_group keeps that group's users only."""
    everyone = materialization_metadata(first_run, PROJECT, "tier2_ranker")
    assert everyone["train_group"] == "everyone"
    down = ServingResource(url=f"http://127.0.0.1:{settings.kafka.port + 51}", admin_token=TOKEN)

    def run(group: str) -> dg.ExecuteInProcessResult:
        config = {"train_group": group}
        return materialize_project(
            graph_settings,
            PROJECT,
            selection=["tier1_candidates", "tier2_ranker"],
            run_config={"ops": {f"{PROJECT}__tier2_ranker": {"config": config}}},
            resources={"serving": down},
            raise_on_error=False,
        )

    treated = materialization_metadata(run("ranker_ab.treatment"), PROJECT, "tier2_ranker")
    assert treated["train_group"] == "ranker_ab.treatment"
    used, all_rows = (
        int(str(treated["training_rows_used"])),
        int(str(everyone["training_rows_used"])),
    )
    assert 0 < used < all_rows
    refused = run("ranker_ab.nope")
    assert not refused.success
    with pytest.raises(KeyError):
        materialization_metadata(refused, PROJECT, "tier2_ranker")


def test_serving_resource_against_a_real_http_server(fake_serving: FakeServing) -> None:
    resource = ServingResource(url=fake_serving.url, admin_token=TOKEN)
    answer = resource.load_model("p", "tier2", "ranker", "champion", "7")
    assert answer == {"name": "p.tier2.ranker", "alias": "champion", "version": "7"}
    assert fake_serving.calls[-1]["version"] == "7"
    from twotier.pipelines.resources.serving import ServingAdminError, ServingUnavailable

    with pytest.raises(ServingAdminError, match="403") as wrong:
        ServingResource(url=fake_serving.url, admin_token="nope").load_model(
            "p", "tier1", "candidates", "champion"
        )
    assert wrong.value.status_code == 403
    with pytest.raises(ServingUnavailable, match="not reachable"):
        ServingResource(url="http://127.0.0.1:9", admin_token=TOKEN, timeout_s=2).load_model(
            "p", "tier1", "candidates", "champion"
        )
