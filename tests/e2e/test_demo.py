"""The main job end to end, as `make demo` runs it, against the test stack.

Kafka → Spark → SecantusDB; Kafka → Dagster asset graph (chdb, training sets, tier one and tier
two as ONNX, MLflow, checks, promotion of both tiers) → Ray Serve → /recommend over HTTP; a
challenger, the A/B experiment, a hot swap and the experiment's readout on the users' real
later ratings. Then the UIs' own APIs must show the runs, both models with their aliases
and the assets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from twotier.config import Settings
from twotier.infra.service import Service
from twotier.naming import model_name, online_collection
from twotier.online_store import connect

PROJECT = "demo_e2e"
LIMIT = 5000


@pytest.fixture(scope="module")
def demo_run(
    settings: Settings,
    movielens: Path,
    kafka: Service,
    online_server: Service,
    mlflow_server: Service,
    dagster_service: Service,
    ray_cluster: Service,
) -> subprocess.CompletedProcess[str]:
    # The demo's project has the feature groups of the built-in movielens project.
    projects = {**settings.projects, PROJECT: settings.project_features("movielens")}
    demo_settings = settings.model_copy(update={"project": PROJECT, "projects": projects})
    env = {**os.environ, **demo_settings.to_env(), "COLUMNS": "200"}  # no wrapped titles
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotier.infra.demo",
            "--dataset",
            str(movielens),
            "--limit",
            str(LIMIT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    (settings.data_dir / "demo_e2e.log").write_text(result.stdout + result.stderr)
    return result


def test_demo_finishes_with_recommendations_an_experiment_and_a_swap(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    out = demo_run.stdout
    assert demo_run.returncode == 0, out[-3000:] + demo_run.stderr[-3000:]
    assert "demo finished" in out
    assert "champion's hold-out NDCG@10" in out and "recent pop." in out
    assert "known users, two tiers / recent popularity" in out
    assert "A/B experiment ranker_ab" in out
    assert "control" in out and "treatment" in out
    assert "@champion: v" in out  # the hot swap's answer


def test_demo_reads_out_the_experiment_on_real_later_ratings(
    demo_run: subprocess.CompletedProcess[str], settings: Settings
) -> None:
    out = demo_run.stdout
    assert demo_run.returncode == 0, out[-3000:] + demo_run.stderr[-3000:]
    assert "9. The experiment's readout" in out
    assert "served 400/400 users" in out
    assert "ranker_ab (shuffle 1): hits per recommendation" in out
    assert "no attributed recommendations yet" not in out
    assert "95% interval" in out and ("concluded:" in out or "running:" in out)
    plot = settings.data_dir / "readouts" / PROJECT / "ranker_ab-shuffle1.png"
    assert f"readout plot (hit rate by day per group, 95% intervals): {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_streaming_job_wrote_exact_counters(
    demo_run: subprocess.CompletedProcess[str], settings: Settings, movielens: Path
) -> None:
    import pandas as pd

    ratings = pd.read_csv(movielens / "ratings.csv")
    ratings = ratings.sort_values(["timestamp", "userId", "movieId"], kind="stable").head(LIMIT)
    expected = ratings.groupby("userId").agg(
        views=("rating", "size"),
        smiles=("rating", lambda r: int((r >= 4).sum())),
        dislikes=("rating", lambda r: int((r <= 2).sum())),
        rating_sum=("rating", "sum"),
    )
    with connect(settings) as store:
        got = store.get_many(
            online_collection(PROJECT, "user_stats_v1"), [str(u) for u in expected.index]
        )
    assert len(got) == len(expected)
    for user, row in expected.iterrows():
        doc = got[str(user)]
        assert doc["views"] == row["views"]
        assert doc.get("smiles", 0) == row["smiles"]
        assert doc.get("dislikes", 0) == row["dislikes"]
        assert doc["rating_sum"] == pytest.approx(row["rating_sum"])


@pytest.mark.parametrize(
    ("tier", "model", "metric"),
    [("tier2", "ranker", "auc"), ("tier1", "candidates", "tier_one_recall_at_100")],
)
def test_mlflow_shows_both_tiers_with_their_alias_and_run(
    demo_run: subprocess.CompletedProcess[str],
    settings: Settings,
    tier: str,
    model: str,
    metric: str,
) -> None:
    name = model_name(PROJECT, tier, model)
    base = settings.mlflow.uri
    found = httpx.get(f"{base}/api/2.0/mlflow/registered-models/get", params={"name": name})
    assert found.status_code == 200, found.text
    aliases = {a["alias"]: a["version"] for a in found.json()["registered_model"]["aliases"]}
    assert "champion" in aliases
    version = httpx.get(
        f"{base}/api/2.0/mlflow/model-versions/get",
        params={"name": name, "version": aliases["champion"]},
    ).json()["model_version"]
    run = httpx.get(f"{base}/api/2.0/mlflow/runs/get", params={"run_id": version["run_id"]})
    assert run.status_code == 200
    metrics = {m["key"]: m["value"] for m in run.json()["run"]["data"]["metrics"]}
    assert metric in metrics and metrics[metric] > 0.0
    assert "popularity_ndcg_at_10" in metrics
    assert httpx.get(base).status_code == 200  # the UI itself loads


def test_after_the_swap_the_better_ranker_is_champion_and_serving_uses_it(
    demo_run: subprocess.CompletedProcess[str], settings: Settings
) -> None:
    name = model_name(PROJECT, "tier2", "ranker")
    aliases = {
        a["alias"]: a["version"]
        for a in httpx.get(
            f"{settings.mlflow.uri}/api/2.0/mlflow/registered-models/get", params={"name": name}
        ).json()["registered_model"]["aliases"]
    }
    ndcg = {}
    for alias in ("champion", "challenger"):
        run = httpx.get(
            f"{settings.mlflow.uri}/api/2.0/mlflow/model-versions/get",
            params={"name": name, "version": aliases[alias]},
        ).json()["model_version"]["run_id"]
        metrics = httpx.get(
            f"{settings.mlflow.uri}/api/2.0/mlflow/runs/get", params={"run_id": run}
        ).json()["run"]["data"]["metrics"]
        ndcg[alias] = next(m["value"] for m in metrics if m["key"] == "two_tier_ndcg_at_10")
    out = demo_run.stdout
    if ndcg["challenger"] < ndcg["champion"]:  # the demo swapped, then swapped back
        assert aliases["champion"] != aliases["challenger"]
        assert "does not keep it" in out
    else:
        assert aliases["champion"] == aliases["challenger"] and "it stays champion" in out
    url = f"http://{settings.ray.host}:{settings.ray.serve_port}/v1/{PROJECT}/recommend"
    answer = httpx.post(url, json={"user_id": "1", "n": 5, "group": "control"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    used = {m["name"]: m["version"] for m in body["models"]}
    assert used[name] == aliases["champion"]
    assert body["group"] == "control" and len(body["items"]) == 5


def test_dagster_shows_the_assets_and_the_run(
    demo_run: subprocess.CompletedProcess[str], settings: Settings
) -> None:
    url = f"http://{settings.dagster.host}:{settings.dagster.port}/graphql"
    query = """
    { assetsOrError { ... on AssetConnection { nodes { key { path } } } }
      runsOrError { ... on Runs { results { status assetSelection { path } } } } }
    """
    data = httpx.post(url, json={"query": query}, timeout=30).json()["data"]
    keys = {"/".join(n["key"]["path"]) for n in data["assetsOrError"]["nodes"]}
    assert {"movielens/events_offline", "movielens/tier2_ranker", "movielens/promotion"} <= keys
    assert {f"{PROJECT}/tier1_candidates", f"{PROJECT}/promotion"} <= keys  # the demo's run
    runs = data["runsOrError"]["results"]
    assert any(
        r["status"] == "SUCCESS"
        and any("/".join(a["path"]) == f"{PROJECT}/promotion" for a in r["assetSelection"] or [])
        for r in runs
    ), runs
    assert httpx.get(f"http://{settings.dagster.host}:{settings.dagster.port}").status_code == 200
