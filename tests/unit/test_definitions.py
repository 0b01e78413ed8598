"""The Dagster code location loads, keys assets by project and follows TWOTIER_* settings."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from twotier.config import load_settings
from twotier.pipelines.assets import make_project_assets
from twotier.pipelines.definitions import make_definitions
from twotier.pipelines.resources import (
    KafkaResource,
    MLflowResource,
    OfflineStoreResource,
    OnlineStoreResource,
    SparkResource,
)
from twotier.pipelines.sensors import (
    NewDataCursor,
    lag_keeps_growing,
    make_new_data_sensor,
    make_streaming_watchdog_sensor,
)


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


def test_defs_load_with_every_asset_keyed_by_its_project() -> None:
    defs = _reload_defs()
    keys = set(defs.resolve_all_asset_keys())
    assert dg.AssetKey(["movielens", "events_offline"]) in keys
    assert {k.path[0] for k in keys} == set(load_settings().projects)


def test_assets_touching_the_offline_store_share_the_pool() -> None:
    touching = [
        a
        for a in make_project_assets("movielens")
        if isinstance(a, dg.AssetsDefinition) and "offline_store" in a.required_resource_keys
    ]
    assert touching
    for asset in touching:
        assert asset.op.pool == "offline_store", asset.keys


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
        make_project_assets("Bad-Name")


def _names(defs: dg.Definitions) -> tuple[set[str], dict[str, Any], dict[str, Any]]:
    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}
    return jobs, {s.name: s for s in repo.schedule_defs}, {s.name: s for s in repo.sensor_defs}


def test_every_declared_project_gets_jobs_schedule_and_sensors() -> None:
    settings = load_settings(path=None)
    assert {"movielens", "memes"} <= set(settings.projects)
    jobs, schedules, sensors = _names(make_definitions(settings))
    for p in settings.projects:
        assert {f"{p}_retrain", f"{p}_deploy_streaming", f"{p}_compact_offline_store"} <= jobs
        assert schedules[f"{p}_retrain_schedule"].job_name == f"{p}_retrain"
        assert schedules[f"{p}_retrain_schedule"].cron_schedule == "0 * * * *"
        assert sensors[f"{p}_new_data_sensor"].job_name == f"{p}_retrain"
        assert sensors[f"{p}_streaming_watchdog"].job_name == f"{p}_deploy_streaming"


def test_projects_with_experiments_get_a_shuffle_job() -> None:
    settings = load_settings(path=None)
    jobs, _, _ = _names(make_definitions(settings))
    with_experiments = {p for p in settings.projects if settings.project_features(p).experiments}
    assert with_experiments  # the built-in projects declare one
    for p in settings.projects:
        assert (f"{p}_experiment_shuffle" in jobs) == (p in with_experiments)


def test_retrain_job_selects_exactly_the_project_prefix() -> None:
    settings = load_settings(path=None)
    defs = make_definitions(settings)
    keys = set(defs.resolve_all_asset_keys())
    daily = {"recommendation_outcomes", "experiment_readout", "feature_skew"}
    for p in ("movielens", "memes"):
        job = defs.resolve_job_def(f"{p}_retrain")
        selected = set(job.asset_layer.executable_asset_keys)
        assert selected == {k for k in keys if k.path[0] == p and k.path[-1] not in daily}
        assert selected
        if settings.project_features(p).experiments:
            readout = defs.resolve_job_def(f"{p}_readout")
            chosen = {k.path[-1] for k in readout.asset_layer.executable_asset_keys}
            assert {"recommendation_outcomes", "experiment_readout"} <= chosen <= daily
            assert {k.path[0] for k in readout.asset_layer.executable_asset_keys} == {p}


def test_readout_schedule_refreshes_yesterday_and_today() -> None:
    import datetime as dt

    from twotier.pipelines.jobs.readout import readout_run_request

    request = readout_run_request("movielens", dt.datetime(2026, 12, 1, 0, 15, tzinfo=dt.UTC))
    assert request.job_name == "movielens_readout"
    assert request.tags["dagster/asset_partition_range_start"] == "2026-11-30"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-12-01"


def test_schedule_and_new_data_sensor_are_off_by_default_and_on_by_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    _, schedules, sensors = _names(make_definitions(load_settings(path=None)))
    stopped = dg.DefaultScheduleStatus.STOPPED
    assert schedules["movielens_retrain_schedule"].default_status == stopped
    assert sensors["movielens_new_data_sensor"].default_status == dg.DefaultSensorStatus.STOPPED
    # The watchdog only acts on a deployed job, so it is always on.
    watchdog = sensors["movielens_streaming_watchdog"]
    assert watchdog.default_status == dg.DefaultSensorStatus.RUNNING

    monkeypatch.setenv("TWOTIER_PIPELINES__RETRAIN_SCHEDULE_RUNNING", "true")
    monkeypatch.setenv("TWOTIER_PIPELINES__RETRAIN_CRON", "15 */2 * * *")
    _, schedules, sensors = _names(_reload_defs())
    schedule = schedules["memes_retrain_schedule"]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "15 */2 * * *"
    assert sensors["memes_new_data_sensor"].default_status == dg.DefaultSensorStatus.RUNNING


def test_schedule_requests_a_tagged_retrain_run() -> None:
    defs = make_definitions(load_settings(path=None), ("movielens",))
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("movielens_retrain_schedule")
    tick = datetime(2025, 1, 1, 12, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo) as context:
        result = schedule.evaluate_tick(context)
    [request] = result.run_requests or []
    assert request.tags["twotier/project"] == "movielens"
    assert request.tags["twotier/trigger"] == "schedule"


def test_resources_cover_every_external_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOTIER_CONFIG", raising=False)
    monkeypatch.setenv("TWOTIER_SECANTUSDB__PORT", "17017")
    monkeypatch.setenv("TWOTIER_SPARK__MASTER", "spark://10.0.0.5:7077")
    monkeypatch.setenv("TWOTIER_DATA_DIR", "/tmp/twotier-defs-test")
    resources = _resources()
    online, spark = resources["online_store"], resources["spark"]
    assert isinstance(online, OnlineStoreResource)
    assert online.uri == "mongodb://127.0.0.1:17017/"
    assert isinstance(spark, SparkResource)
    assert spark.master == "spark://10.0.0.5:7077" and not spark.local
    assert spark.data_dir == "/tmp/twotier-defs-test"
    # What a started job sees comes from the resources, not from this process's settings.
    seen = spark.settings(online.settings(load_settings(path=None)))
    assert seen.spark.master == "spark://10.0.0.5:7077"
    assert seen.online_store_uri == "mongodb://127.0.0.1:17017/"
    assert str(seen.data_dir) == "/tmp/twotier-defs-test"
    command = spark.online_job_command(seen, "memes")
    assert command[-3:] == ["online", "--project", "memes"]
    assert command[1:3] == ["-m", "twotier.feature_jobs"]


def test_lag_growth_needs_every_step_to_grow() -> None:
    assert lag_keeps_growing([1, 2, 3, 4], 3)
    assert not lag_keeps_growing([2, 3, 4], 3)  # too few readings
    assert not lag_keeps_growing([1, 2, 2, 4], 3)
    assert not lag_keeps_growing([9, 8, 7, 6], 3)
    assert lag_keeps_growing([50, 1, 2, 3, 4], 3)


def test_new_data_cursor_round_trips_and_survives_garbage() -> None:
    cursor = NewDataCursor(events=120, max_ts=1_700_000_000_000)
    assert NewDataCursor.parse(cursor.dumps()) == cursor
    assert NewDataCursor.parse("not json") == NewDataCursor()
    assert NewDataCursor.parse(None) == NewDataCursor()


def test_bad_sensor_thresholds_are_refused() -> None:
    job = dg.define_asset_job("movielens_retrain")
    with pytest.raises(ValueError, match="min_new_events is 0"):
        make_new_data_sensor("movielens", job, [], min_new_events=0)
    deploy = make_definitions(load_settings(path=None), ("movielens",)).resolve_job_def(
        "movielens_deploy_streaming"
    )
    with pytest.raises(ValueError, match="growth_evaluations is 0"):
        make_streaming_watchdog_sensor("movielens", deploy, growth_evaluations=0)
