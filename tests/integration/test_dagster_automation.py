"""The code location in the real Dagster webserver and daemon: jobs, schedules, sensors, pool.

Runs launched through GraphQL are executed by the daemon's queued run coordinator, so
the ``offline_store`` pool limit of the instance (1) is what keeps them apart.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from twotier.config import Settings
from twotier.infra.dagster_service import CODE_LOCATION_MODULE
from twotier.infra.service import Service

_LOCATION = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name location { name }
    pipelines { name }
    schedules { name cronSchedule scheduleState { status } }
    sensors { name sensorState { status } }
} } } }
"""

_LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

_RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { status stepStats { stepKey status startTime endTime } }
  }
}
"""

_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def _graphql(service: Service, query: str, variables: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{service.endpoint}/graphql",
        json={"query": query, "variables": variables or {}},
        timeout=30.0,
    )
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def test_location_serves_every_projects_jobs_schedules_and_sensors(
    dagster_service: Service, settings: Settings
) -> None:
    [repo] = _graphql(dagster_service, _LOCATION)["repositoriesOrError"]["nodes"]
    assert repo["location"]["name"] == CODE_LOCATION_MODULE
    jobs = {p["name"] for p in repo["pipelines"]}
    schedules = {s["name"]: s for s in repo["schedules"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    for p in settings.projects:
        assert {f"{p}_retrain", f"{p}_deploy_streaming", f"{p}_compact_offline_store"} <= jobs
        schedule = schedules[f"{p}_retrain_schedule"]
        assert schedule["cronSchedule"] == settings.pipelines.retrain_cron
        assert schedule["scheduleState"]["status"] == "STOPPED"  # off by default locally
        assert sensors[f"{p}_new_data_sensor"] == "STOPPED"
        assert sensors[f"{p}_streaming_watchdog"] == "RUNNING"


def _launch(service: Service, job: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": CODE_LOCATION_MODULE,
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "runConfigData": {},
    }
    launched = _graphql(service, _LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id: str = launched["run"]["runId"]
    return run_id


def _finished(service: Service, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = _graphql(service, _RUN, {"runId": run_id})["runOrError"]
        if run["status"] in _DONE:
            return run
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} did not finish in {timeout:.0f} s")


def test_ops_of_the_offline_store_pool_never_overlap(
    dagster_service: Service, settings: Settings
) -> None:
    """Two runs launched together: their offline-store steps run one after the other."""
    limits = _graphql(
        dagster_service, "{ instance { concurrencyLimits { concurrencyKey slotCount } } }"
    )["instance"]["concurrencyLimits"]
    assert {c["concurrencyKey"]: c["slotCount"] for c in limits}["offline_store"] == 1

    projects = sorted(settings.projects)[:2]
    run_ids = [_launch(dagster_service, f"{p}_compact_offline_store") for p in projects]
    runs = [_finished(dagster_service, run_id) for run_id in run_ids]
    windows = []
    for run in runs:
        assert run["status"] == "SUCCESS", run
        [step] = run["stepStats"]
        assert step["status"] == "SUCCESS"
        windows.append((step["startTime"], step["endTime"]))
    (_, first_end), (second_start, _) = sorted(windows)
    assert first_end <= second_start, f"offline-store steps overlapped: {windows}"
