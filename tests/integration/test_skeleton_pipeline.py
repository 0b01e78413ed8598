"""The skeleton pipeline on real Kafka, MLflow and chdb: events → offline store → champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.infra.service import Service
from twotier.naming import model_name
from twotier.offline_store import open_offline_store
from twotier.pipelines.materialize import materialization_metadata, materialize_skeleton
from twotier.registry import load_onnx_bytes, resolve
from twotier.replay import read_events, replay_movielens
from twotier.training import onnx_probabilities

PROJECT = "movielens"
RATINGS = 5000


@pytest.fixture()
def stack_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test stack, with an offline store of this test's own."""
    config = ClickHouseOfflineStoreConfig(dsn=f"chdb://{tmp_path / 'offline'}")
    return settings.model_copy(update={"offline_store": config})


def test_skeleton_assets_register_a_champion_that_scores_like_the_asset(
    stack_settings: Settings, kafka: Service, mlflow_server: Service, movielens: Path
) -> None:
    produced = replay_movielens(stack_settings, PROJECT, movielens, limit=RATINGS)
    assert produced > RATINGS  # a view per rating plus smiles and dislikes
    in_topic = {e.event_id for e in read_events(stack_settings, PROJECT, timeout_s=60)}
    assert len(in_topic) >= produced  # the topic may hold events of other tests too

    result = materialize_skeleton(stack_settings, PROJECT)
    assert result.success
    loaded = materialization_metadata(result, PROJECT, "events_offline")
    assert loaded["rows_read"] >= len(in_topic)
    assert loaded["rows_inserted"] == loaded["rows_total"] == len(in_topic)
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "auc_above_chance" and check.passed

    model = materialization_metadata(result, PROJECT, "ranker_model")
    name = model_name(PROJECT, "tier2", "ranker")
    assert model["model_name"] == name == "movielens.tier2.ranker"
    assert isinstance(model["auc"], float) and 0.5 < model["auc"] <= 1.0
    uri = stack_settings.mlflow.uri
    champion = resolve(uri, name, "champion")
    assert champion.version == model["version"]
    assert list(champion.feature_names) == model["feature_names"]

    sample = model["holdout_sample"]
    assert isinstance(sample, dict) and len(sample["features"]) == 20
    onnx_bytes = load_onnx_bytes(uri, name, champion.version)
    scored = onnx_probabilities(onnx_bytes, np.array(sample["features"], dtype=np.float32))
    np.testing.assert_allclose(scored, sample["probability"], atol=1e-6)

    # Loading again adds nothing: the offline store is idempotent by event_id.
    again = materialize_skeleton(stack_settings, PROJECT)
    assert materialization_metadata(again, PROJECT, "events_offline")["rows_inserted"] == 0
    assert int(resolve(uri, name, "champion").version) == int(champion.version) + 1
    with open_offline_store(stack_settings) as store:
        assert store.count_events(PROJECT) == len(in_topic)
