"""kill -9 while serving: a Ray Serve replica, and the MLflow server behind the app.

Four client threads call ``POST /v1/{project}/recommend`` in a loop the whole time and
record every answer (status code, or the exception of a request that got none). After a
replica is killed, Serve starts a new one: meanwhile requests are answered or cleanly
refused (no hang: every request ends well within its client timeout), then every answer
is 200 again. While the MLflow server is down the models already loaded keep being
served (every answer 200, same versions), the alias poll fails quietly (a bounded number
of warnings), and an admin move fails fast with 503 naming the registry; after
``start()`` a hot swap works again. What each fault cost goes to ``fault_report``. Every
test leaves the services running, since later tests share the session services.
"""

from __future__ import annotations

import os

# Set before mlflow and ray are imported: both would otherwise report usage off-box.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from twotier.config import Settings
from twotier.features.builtin import builtin_projects
from twotier.infra.ray_service import RayService
from twotier.infra.service import Service, pid_alive
from twotier.registry import ModelVersionRef
from twotier.serve_apps.deploy import deploy, serve_url
from twotier.serve_apps.testing import (
    register_tier_one,
    register_tier_two,
    tiny_tier_one,
    tiny_tier_two,
)

T = TypeVar("T")

PROJECT = f"svfault_{uuid.uuid4().hex[:5]}"
CLIENTS = 4
CLIENT_TIMEOUT_S = 30.0
"""A request that gets no answer within this is a hang (the test fails on any)."""
ALIAS_POLL_S = 1.0
OUTAGE_S = 12.0
"""How long the MLflow server stays down while requests are served."""
STEADY_S = 4.0
"""After a recovery, this long of load in which every answer must be 200."""
PACE_S = 0.1
"""Each client waits this long between requests (4 clients keep 2 shared cores busy, not
saturated, so a restarted component is not starved)."""
REFUSALS = {502, 503, 504}
"""Statuses that count as a clean refusal while a replica is replaced."""


# -- the load ---------------------------------------------------------------------------


@dataclass
class Answer:
    """One request of the load: when it was sent and ended, and what came back."""

    started: float
    ended: float
    outcome: str
    """The status code (``"200"``) or the exception's type name (``"ReadTimeout"``)."""
    versions: tuple[str, str] | None = None
    """``(tier1 version, tier2 version)`` of a 200 answer."""
    detail: str = ""


@dataclass
class Load:
    """Client threads calling ``/v1/{project}/recommend`` in a loop until stopped."""

    url: str
    project: str
    answers: list[Answer] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, clients: int = CLIENTS) -> Load:
        for n in range(clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT_S + 10)

    def _client(self, n: int) -> None:
        user = n
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            while not self.halt.is_set():
                user = user % 40 + 1
                body = {"user_id": str(user), "n": 5, "k": 20}
                started = time.monotonic()
                try:
                    response = http.post(f"{self.url}/v1/{self.project}/recommend", json=body)
                except httpx.HTTPError as exc:
                    answer = Answer(started, time.monotonic(), type(exc).__name__, None, str(exc))
                else:
                    versions = None
                    if response.status_code == 200:
                        used = {m["tier"]: m["version"] for m in response.json()["models"]}
                        versions = (used["tier1"], used["tier2"])
                    answer = Answer(
                        started,
                        time.monotonic(),
                        str(response.status_code),
                        versions,
                        "" if response.status_code == 200 else response.text[:300],
                    )
                with self.lock:
                    self.answers.append(answer)
                time.sleep(PACE_S)

    def since(self, moment: float) -> list[Answer]:
        """Answers to requests sent at or after ``moment``."""
        with self.lock:
            return [a for a in self.answers if a.started >= moment]

    def ended_since(self, moment: float) -> list[Answer]:
        """Answers that arrived at or after ``moment``."""
        with self.lock:
            return [a for a in self.answers if a.ended >= moment]


@contextlib.contextmanager
def load_on(url: str, project: str) -> Iterator[Load]:
    load = Load(url, project).start()
    try:
        yield load
    finally:
        load.stop()


def _outcomes(answers: list[Answer]) -> dict[str, int]:
    return dict(sorted(Counter(a.outcome for a in answers).items()))


def _failed(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.outcome != "200"]


# -- helpers ------------------------------------------------------------------------------


def _wait(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = probe()
            if value is not None:
                return value
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _replica_pids(ray_cluster: RayService, deployment: str) -> list[int]:
    """Live processes of this stack's node titled ``ray::ServeReplica:twotier:<deployment>``."""
    prefix = f"ray::ServeReplica:twotier:{deployment}"
    found = []
    for pid in ray_cluster.node_processes():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        rest = title[len(prefix) :] if title.startswith(prefix) else None
        if rest is not None and (not rest or rest[0] in ". ") and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def _replicas(url: str) -> dict[str, str]:
    """Replica id -> role of every replica the alias directory heard from recently."""
    status = httpx.get(f"{url}/v1/models", timeout=10).json()
    return {replica: state["role"] for replica, state in status["replicas"].items()}


def _admin(settings: Settings, body: dict[str, Any], timeout: float = 60.0) -> httpx.Response:
    token = settings.serving.admin_token.get_secret_value()
    return httpx.post(
        f"{serve_url(settings)}/v1/admin/models",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def _poll_warnings(ray_cluster: RayService) -> int:
    """'alias poll failed' lines in the ModelDirectory replica logs of this stack."""
    logs = ray_cluster.temp_dir / "session_latest" / "logs" / "serve"
    return sum(
        path.read_text(errors="replace").count("alias poll failed")
        for path in logs.glob("replica_twotier_ModelDirectory_*.log")
    )


def _sigkill_group(service: Service) -> float:
    """SIGKILL the service's whole process group, as a crash of its host would."""
    pid = service.pid()
    assert pid is not None, f"{service.name} is not running"
    killed = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait(f"{service.name} (pid {pid}) to exit", lambda: True if not pid_alive(pid) else None, 30)
    return killed


# -- the app ------------------------------------------------------------------------------


@dataclass
class Served:
    settings: Settings
    url: str
    champion: tuple[ModelVersionRef, ModelVersionRef]
    """The tier-one and tier-two versions ``champion`` points at."""
    spare: ModelVersionRef
    """A tier-two version no alias points at (the hot-swap target)."""


@pytest.fixture(scope="module")
def served(
    mlflow_server: Service, online_server: Service, ray_cluster: Service, settings: Settings
) -> Served:
    """One project with tiny real models of both tiers, deployed with two rankers."""
    project = builtin_projects()["movielens"].model_copy(update={"experiments": ()})
    base = settings.model_copy(update={"projects": {**settings.projects, PROJECT: project}})
    base = base.model_copy(
        update={
            "serving": base.serving.model_copy(
                update={"alias_poll_s": ALIAS_POLL_S, "feature_cache_ttl_s": 2.0}
            )
        }
    )
    uri = base.mlflow.uri
    spec = project.model_spec("ranker")
    one = register_tier_one(uri, PROJECT, tiny_tier_one(n_items=60, seed=1))
    two = register_tier_two(uri, PROJECT, tiny_tier_two(spec, seed=1))
    spare = register_tier_two(uri, PROJECT, tiny_tier_two(spec, seed=2), alias=None)
    deploy(
        base,
        print,
        options={
            "Ingress": {"num_replicas": 1},
            "TierOneHost": {"num_replicas": 1},
            "TierTwoHost": {"num_replicas": 2},
        },
        log_recommendations=False,
    )
    return Served(base, serve_url(base), (one, two), spare)


# -- a Serve replica ----------------------------------------------------------------------


@pytest.mark.parametrize(("deployment", "role"), [("TierTwoHost", "host"), ("Ingress", "ingress")])
def test_sigkill_of_a_serve_replica_is_replaced_and_answers_recover(
    served: Served,
    ray_cluster: Service,
    deployment: str,
    role: str,
    fault_report: dict[str, dict[str, Any]],
) -> None:
    assert isinstance(ray_cluster, RayService)
    before = _replica_pids(ray_cluster, deployment)
    assert before, f"no {deployment} replica process on this stack's Ray node"
    victim = before[0]
    known = set(_replicas(served.url))
    with load_on(served.url, PROJECT) as load:
        _wait("200 answers under load", lambda: len(load.since(0)) >= 20 or None, 60)
        assert not _failed(load.since(0)), _outcomes(load.since(0))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _wait(f"{deployment} pid {victim} to exit", lambda: not pid_alive(victim) or None, 30)

        new_pid = _wait(
            f"a new {deployment} replica process",
            lambda: next(
                (p for p in _replica_pids(ray_cluster, deployment) if p not in before), None
            ),
            180,
        )
        process_back_s = time.monotonic() - killed_at
        new_replica = _wait(
            f"the new {deployment} replica syncing with the alias directory",
            lambda: next(
                (r for r, rl in _replicas(served.url).items() if rl == role and r not in known),
                None,
            ),
            180,
        )
        replica_back_s = time.monotonic() - killed_at
        steady_from = time.monotonic()
        time.sleep(STEADY_S)
    answers = load.since(killed_at - 1.0)
    after = load.since(steady_from)
    failed = _failed(answers)
    hangs = [a for a in answers if a.ended - a.started >= CLIENT_TIMEOUT_S - 1]
    last_failure = max((a.ended for a in failed), default=killed_at)
    flowing = min(a.ended for a in answers if a.outcome == "200" and a.started >= killed_at)

    assert not hangs, f"{len(hangs)} requests hung: {hangs[:3]}"
    assert after and not _failed(after), _outcomes(after)
    # A lost model host is retried once by the ingress, else refused with 503. A request
    # in flight in a killed ingress gets the proxy's 500; nothing beyond those may fail.
    errors = [a for a in failed if a.outcome not in {str(s) for s in REFUSALS}]
    assert len(errors) <= (CLIENTS if deployment == "Ingress" else 0), (
        f"{len(errors)} requests failed other than with {sorted(REFUSALS)}: "
        f"{[(a.outcome, a.detail) for a in errors[:5]]}"
    )
    assert len({a.versions for a in answers if a.versions}) == 1
    assert new_pid not in before and new_replica not in known

    fault_report[f"serve_replica_{deployment.lower()}_sigkill"] = {
        "component": f"Ray Serve replica of {deployment} (one of "
        f"{len(before)} on the node; {CLIENTS} clients under load)",
        "requests_sent": len(answers),
        "requests_failed": len(failed),
        "failed_by_outcome": _outcomes(failed),
        "failure_details": sorted({a.detail[:160] for a in failed})[:5],
        "seconds_to_new_replica_process": round(process_back_s, 2),
        "seconds_to_new_replica_serving": round(replica_back_s, 2),
        "seconds_until_answers_all_200": round(max(0.0, last_failure - killed_at), 2),
        "seconds_kill_to_first_200_of_a_request_sent_after_it": round(flowing - killed_at, 2),
        "longest_request_s": round(max(a.ended - a.started for a in answers), 2),
    }


# -- the MLflow server --------------------------------------------------------------------


def test_sigkill_of_mlflow_keeps_serving_and_hot_swap_works_after_restart(
    served: Served,
    mlflow_server: Service,
    ray_cluster: Service,
    fault_report: dict[str, dict[str, Any]],
) -> None:
    assert isinstance(ray_cluster, RayService)
    one, two = served.champion
    champion = (one.version, two.version)
    swap = {"project": PROJECT, "tier": "tier2", "model": "ranker", "alias": "champion"}
    with load_on(served.url, PROJECT) as load:
        _wait("200 answers under load", lambda: len(load.since(0)) >= 20 or None, 60)
        assert {a.versions for a in load.since(0)} == {champion}, _outcomes(load.since(0))
        warnings_before = _poll_warnings(ray_cluster)
        restarted_s = 0.0
        try:
            killed_at = _sigkill_group(mlflow_server)
            time.sleep(OUTAGE_S / 2)
            move_started = time.monotonic()
            refused = _admin(served.settings, {**swap, "version": served.spare.version})
            move_refused_s = time.monotonic() - move_started
            time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
            outage = load.since(killed_at)
            warnings = _poll_warnings(ray_cluster) - warnings_before
        finally:
            restart_started = time.monotonic()
            mlflow_server.start(print)
            restarted_s = time.monotonic() - restart_started
        outage_s = time.monotonic() - killed_at

        swap_started = time.monotonic()
        swapped = _wait(
            "a hot swap through the admin endpoint after the restart",
            lambda: (
                r
                if (
                    r := _admin(served.settings, {**swap, "version": served.spare.version})
                ).status_code
                == 200
                else None
            ),
            60,
            every=1.0,
        )
        swap_s = time.monotonic() - swap_started
        swapped_at = time.monotonic()
        time.sleep(STEADY_S)
        after = load.since(swapped_at)
        everything = load.since(killed_at)

    assert outage and {a.outcome for a in outage} == {"200"}, _outcomes(outage)
    assert {a.versions for a in outage} == {champion}
    assert refused.status_code == 503, refused.text
    detail = refused.json()["detail"]
    assert served.settings.mlflow.uri in detail and "Fix:" in detail, detail
    assert move_refused_s < 30, move_refused_s
    # The poll fails once per round at most, not once per request or per model.
    assert 1 <= warnings <= OUTAGE_S / ALIAS_POLL_S + 2, warnings
    assert swapped.json()["version"] == served.spare.version
    assert swapped.json()["previous_version"] == two.version
    assert after and {a.versions for a in after} == {(one.version, served.spare.version)}
    assert not _failed(everything), _outcomes(everything)

    fault_report["mlflow_server_sigkill_while_serving"] = {
        "component": f"mlflow server (whole process group) while {CLIENTS} clients call "
        "/v1/{project}/recommend",
        "requests_sent": len(everything),
        "requests_failed": len(_failed(everything)),
        "requests_during_outage": len(outage),
        "failed_by_outcome": _outcomes(_failed(everything)),
        "seconds_until_answers_all_200": 0.0,
        "seconds_down": round(outage_s, 2),
        "alias_poll_warnings_while_down": warnings,
        "admin_move_while_down": f"HTTP {refused.status_code} after {move_refused_s:.2f} s",
        "seconds_start_to_healthy": round(restarted_s, 2),
        "seconds_to_hot_swap_after_restart": round(swap_s, 2),
        "hot_swap_seconds_reported": swapped.json()["seconds"],
    }
