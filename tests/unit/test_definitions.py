"""The Dagster code location loads, keys assets by project and follows TWOTIER_* settings."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pytest

from twotier.config import load_settings
from twotier.pipelines.assets.skeleton import make_skeleton_assets
from twotier.pipelines.resources import KafkaResource, MLflowResource, OfflineStoreResource

EXPECTED = {
    dg.AssetKey(["movielens", "events_offline"]),
    dg.AssetKey(["movielens", "ranker_model"]),
}


def _reload_defs() -> dg.Definitions:
    import twotier.pipelines.definitions as module

    return importlib.reload(module).defs


def _resources() -> Mapping[str, Any]:
    resources = _reload_defs().resources
    assert resources is not None
    return resources


@pytest.fixture(autouse=True)
def _restore_defs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reload the module after each test so no test's environment leaks into ``defs``."""
    yield
    monkeypatch.undo()
    _reload_defs()


def test_defs_load_with_project_prefixed_assets_and_auc_check() -> None:
    defs = _reload_defs()
    assert set(defs.resolve_all_asset_keys()) == EXPECTED
    checks = defs.resolve_asset_graph().asset_check_keys
    ranker_key = dg.AssetKey(["movielens", "ranker_model"])
    assert dg.AssetCheckKey(ranker_key, "auc_above_chance") in checks
    ranker = defs.resolve_assets_def(ranker_key)
    assert ranker.asset_deps[ranker_key] == {dg.AssetKey(["movielens", "events_offline"])}


def test_assets_touching_the_offline_store_share_the_pool() -> None:
    for asset in make_skeleton_assets("movielens"):
        assert asset.op.pool == "offline_store"
        assert "offline_store" in asset.required_resource_keys


def test_resources_follow_twotier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    monkeypatch.setenv("TWOTIER_KAFKA__PORT", "19999")
    monkeypatch.setenv("TWOTIER_MLFLOW__PORT", "15999")
    monkeypatch.setenv("TWOTIER_OFFLINE_STORE__DSN", "http://default:pw@127.0.0.1:18123")
    monkeypatch.setenv("TWOTIER_OFFLINE_STORE__LOCK_TIMEOUT_S", "7.5")
    resources = _resources()
    kafka, mlflow, store = resources["kafka"], resources["mlflow"], resources["offline_store"]
    assert isinstance(kafka, KafkaResource) and kafka.bootstrap_servers == "127.0.0.1:19999"
    assert isinstance(mlflow, MLflowResource) and mlflow.tracking_uri == "http://127.0.0.1:15999"
    assert isinstance(store, OfflineStoreResource)
    assert store.dsn == "http://default:pw@127.0.0.1:18123"
    assert store.lock_timeout_s == 7.5


def test_default_offline_store_is_embedded_under_the_data_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    monkeypatch.delenv("TWOTIER_OFFLINE_STORE__DSN", raising=False)
    monkeypatch.setenv("TWOTIER_DATA_DIR", "/tmp/twotier-defs-test")
    store = _resources()["offline_store"]
    assert store.dsn == "chdb:///tmp/twotier-defs-test/offline"
    assert load_settings().offline_store_dsn == store.dsn


def test_invalid_project_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid project name 'Bad-Name'"):
        make_skeleton_assets("Bad-Name")
