"""The Dagster webserver and daemon of the local stack, on the project's code location.

``DAGSTER_HOME`` is ``settings.dagster_home`` (``<data_dir>/dagster/home``) with a
``dagster.yaml`` written at every start: SQLite storage under the home, telemetry off,
runs queued by the daemon (at most ``MAX_CONCURRENT_RUNS`` at once) and op-level
concurrency pools, with pool ``offline_store`` limited to one op at a time because the
embedded ClickHouse engine allows one process per data path.

Both processes run under ``twotier.infra.dagster_supervisor`` in one process group, so
``stop`` takes the webserver, the daemon, their code servers and any launched run. The
supervisor restarts a crashed webserver or daemon with a back-off (the other keeps
running) and gives up, taking the service down, only on a crash loop; its log lines
(``supervisor: dagster-daemon (pid N) exited with -9 ...; restarting it in 1 s``) go to
``<data_dir>/logs/dagster.log``. Runs queued while the daemon is down start once it is
back; the heartbeats in ``daemon_statuses`` show when it is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from twotier.infra.service import Service
from twotier.progress import Progress, quiet

CODE_LOCATION_MODULE = "twotier.pipelines.definitions"
MAX_CONCURRENT_RUNS = 2
POOL_LIMITS: dict[str, int] = {"offline_store": 1}
"""Pools whose ops must not overlap, and how many of their ops may run at once."""

_HEALTH_QUERY = """
{
  version
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}
"""


_HEARTBEAT_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required lastHeartbeatTime } } } }
"""


def _bin(name: str) -> str:
    """A console script of the running virtualenv (the stack's own Python)."""
    return str(Path(sys.executable).parent / name)


class DagsterService(Service):
    """``dagster-webserver`` plus ``dagster-daemon run`` on ``twotier.pipelines.definitions``."""

    name = "dagster"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return [(self.settings.dagster.host, self.settings.dagster.port)]

    @property
    def endpoint(self) -> str:
        return f"http://{self.settings.dagster.host}:{self.settings.dagster.port}"

    @property
    def home(self) -> Path:
        return self.settings.dagster_home

    def install(self, progress: Progress = quiet) -> None:
        """Nothing to download: ``dagster`` and ``dagster-webserver`` are dependencies."""
        return None

    def instance_config(self) -> dict[str, object]:
        """The content of ``dagster.yaml``."""
        home = self.home
        return {
            "telemetry": {"enabled": False},
            "nux": {"enabled": False},  # no sign-up dialog over the UI of a local stack
            "storage": {"sqlite": {"base_dir": str(home / "storage")}},
            "local_artifact_storage": {
                "module": "dagster._core.storage.root",
                "class": "LocalArtifactStorage",
                "config": {"base_dir": str(home)},
            },
            "compute_logs": {
                "module": "dagster._core.storage.local_compute_log_manager",
                "class": "LocalComputeLogManager",
                "config": {"base_dir": str(home / "compute_logs")},
            },
            "run_coordinator": {
                "module": "dagster._core.run_coordinator",
                "class": "QueuedRunCoordinator",
            },
            "concurrency": {
                "runs": {"max_concurrent_runs": MAX_CONCURRENT_RUNS},
                "pools": {"granularity": "op"},
            },
        }

    def prepare(self, progress: Progress = quiet) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(
            "# Written by twotier at every start of the dagster service; edits are lost.\n"
            + yaml.safe_dump(self.instance_config(), sort_keys=False)
        )

    def setup_commands(self) -> list[list[str]]:
        """One-shot commands run before the servers: the pool limits (kept in storage)."""
        return [
            [_bin("dagster"), "instance", "concurrency", "set", pool, str(limit)]
            for pool, limit in POOL_LIMITS.items()
        ]

    def child_commands(self) -> list[list[str]]:
        """The webserver and the daemon, both loading the project's code location."""
        cfg = self.settings.dagster
        return [
            [
                _bin("dagster-webserver"),
                "-h",
                cfg.host,
                "-p",
                str(cfg.port),
                "-m",
                CODE_LOCATION_MODULE,
            ],
            [_bin("dagster-daemon"), "run", "-m", CODE_LOCATION_MODULE],
        ]

    def command(self) -> list[str]:
        plan = {"before": self.setup_commands(), "run": self.child_commands()}
        return [sys.executable, "-m", "twotier.infra.dagster_supervisor", json.dumps(plan)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env["DAGSTER_HOME"] = str(self.home)
        env["DAGSTER_DISABLE_TELEMETRY"] = "true"
        return env

    def daemon_statuses(self) -> dict[str, bool]:
        """Health of each required daemon, from the webserver's GraphQL API.

        Raises:
            httpx.HTTPError: The webserver does not answer.
        """
        response = httpx.post(
            f"{self.endpoint}/graphql", json={"query": _HEALTH_QUERY}, timeout=5.0
        )
        response.raise_for_status()
        statuses = response.json()["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {s["daemonType"]: bool(s["healthy"]) for s in statuses if s["required"]}

    def daemon_heartbeats(self) -> dict[str, float | None]:
        """Last heartbeat (Unix seconds) of each required daemon, from the webserver.

        Dagster reports a daemon healthy for a long tolerance after its last heartbeat,
        so a heartbeat newer than a crash is what shows a restarted daemon is back.

        Raises:
            httpx.HTTPError: The webserver does not answer.
        """
        response = httpx.post(
            f"{self.endpoint}/graphql", json={"query": _HEARTBEAT_QUERY}, timeout=5.0
        )
        response.raise_for_status()
        statuses = response.json()["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {s["daemonType"]: s["lastHeartbeatTime"] for s in statuses if s["required"]}

    def healthy(self) -> bool:
        """The webserver answers GraphQL and every required daemon heartbeats."""
        try:
            statuses = self.daemon_statuses()
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return False
        return bool(statuses) and all(statuses.values())
