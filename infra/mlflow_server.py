"""The MLflow tracking server and model registry of the local stack.

One lean ``mlflow server``: a single uvicorn worker, no job-execution consumers
(MLflow 3.x otherwise starts a job runner and seven huey consumers, ~2.1 GB idle),
telemetry off, SQLite backend and registry at ``<data_dir>/mlflow/mlflow.db``.
Artifacts live in ``<data_dir>/mlflow/artifacts`` and are served through the server
(``mlflow-artifacts:/``), so clients upload and download over HTTP only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import httpx

from twotier.infra.service import Service
from twotier.progress import Progress, quiet

# Host headers and CORS origins the security middleware of MLflow 3.x lets through.
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


class MLflowService(Service):
    """``mlflow server`` with a SQLite store and proxied local artifacts."""

    name = "mlflow"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return [(self.settings.mlflow.host, self.settings.mlflow.port)]

    @property
    def endpoint(self) -> str:
        return f"http://{self.settings.mlflow.host}:{self.settings.mlflow.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @property
    def artifacts_destination(self) -> str:
        return str(self.data_dir / "artifacts")

    def install(self, progress: Progress = quiet) -> None:
        """Nothing to download: the ``mlflow`` package is a dependency of twotier."""
        return None

    def prepare(self, progress: Progress = quiet) -> None:
        (self.data_dir / "artifacts").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        cfg = self.settings.mlflow
        hosts = [f"{h}:{cfg.port}" for h in _LOCAL_HOSTS] + list(_LOCAL_HOSTS)
        if cfg.host not in _LOCAL_HOSTS:
            hosts += [cfg.host, f"{cfg.host}:{cfg.port}"]
        origins = [f"http://{h}:{cfg.port}" for h in _LOCAL_HOSTS]
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            cfg.host,
            "--port",
            str(cfg.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_destination,
            "--default-artifact-root",
            "mlflow-artifacts:/",
            "--allowed-hosts",
            ",".join(hosts),
            "--cors-allowed-origins",
            ",".join(origins),
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                # No huey job runner / consumers (judges, trace rollups): ~2 GB saved idle.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
                # Never phone home: the stack talks to loopback only.
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
            }
        )
        # A tracking URI inherited from the caller must not redirect the server's own store.
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.endpoint}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text.strip() == "OK"
