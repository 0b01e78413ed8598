"""The local Ray head node and the Ray Serve HTTP proxy, on loopback only.

Ray resolves ``127.0.0.1`` to the machine's outward address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set (its single-machine mode), in the head
and in every driver: ``loopback_env()`` holds these variables and ``init_ray()``
connects a driver with them. Every port of the node is derived from ``ray.gcs_port``
(see ``RayService.node_ports``) and the session files live in a short per-stack folder
under ``/tmp`` (unix socket paths are limited to 107 bytes), so several stacks on one
machine never meet.

Ray workers (the Serve controller, proxy and replicas) call ``setsid`` and outlive the
head's process group, so ``stop`` collects every process of this node first (the
group, its descendants, anything holding files in the node's temp folder) and ends them
all. It never runs ``ray stop``, which would end every Ray node on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from twotier.config import Settings
from twotier.infra.service import Service, StackError, pid_alive, port_open
from twotier.progress import Progress, quiet

LOOPBACK_ENV: dict[str, str] = {
    # Keep node addresses on 127.0.0.1 instead of the machine's outward address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Explicit, so a token some other tool left in ~/.ray/auth_token does not switch the
    # head to token auth behind its drivers' backs; the node is reachable on loopback only.
    "RAY_AUTH_MODE": "disabled",
}
_NO_ROUTES_YET = "Route table is not populated yet."
STOP_GRACE_S = 5.0
WORKER_PORTS = 100
"""Size of the worker port range (one port per worker process)."""


def loopback_env() -> dict[str, str]:
    """Environment variables every process that runs or joins the local node needs."""
    return dict(LOOPBACK_ENV)


def ray_address(settings: Settings) -> str:
    """Where drivers connect: ``settings.ray.address`` if set, else the local head's GCS."""
    return settings.ray.address or f"{settings.ray.host}:{settings.ray.gcs_port}"


def serve_url(settings: Settings) -> str:
    """Base URL of the Ray Serve HTTP proxy of the local stack."""
    return f"http://{settings.ray.host}:{settings.ray.serve_port}"


def init_ray(settings: Settings, **kwargs: Any) -> Any:
    """Connect this process to the stack's Ray cluster as a driver.

    Sets ``loopback_env()`` first (also when ``ray`` is already imported), so the
    driver talks to 127.0.0.1 and never to the machine's outward address.

    Args:
        settings: The stack settings; ``ray_address(settings)`` is used.
        **kwargs: Passed to ``ray.init`` (e.g. ``namespace``, ``logging_level``).

    Returns:
        What ``ray.init`` returns.
    """
    for name, value in LOOPBACK_ENV.items():
        os.environ.setdefault(name, value)
    import ray
    from ray._private import ray_constants

    # The constant is read once at import; a driver that imported ray earlier needs this.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    return ray.init(address=ray_address(settings), **kwargs)


def start_serve(settings: Settings) -> None:
    """Start Ray Serve detached on the running head, HTTP on ``ray.host:serve_port``, then
    deploy the serving application (``twotier.serve_apps``) unless
    ``serving.deploy_on_up`` is off.

    Idempotent: an already running Serve instance is kept as it is, and deploying again
    updates the application in place.
    """
    from ray import serve

    init_ray(settings, logging_level="warning")
    serve.start(
        detached=True,
        http_options={"host": settings.ray.host, "port": settings.ray.serve_port},
    )
    if settings.serving.deploy_on_up:
        from twotier.serve_apps.deploy import deploy

        deploy(settings, lambda line: print(line, flush=True))


def serving_app_healthy(settings: Settings) -> bool:
    """The serving application answers ``/healthz`` (it is deployed and running)."""
    try:
        return httpx.get(f"{serve_url(settings)}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class RayService(Service):
    """``ray start --head --block`` for ``ray.num_cpus`` cores, then Ray Serve detached."""

    name = "ray"

    # -- locations and ports -----------------------------------------------

    @property
    def temp_dir(self) -> Path:
        """Ray's session root: short, and unique to this stack's data folder."""
        digest = hashlib.sha1(str(self.settings.data_dir).encode()).hexdigest()[:8]
        return Path("/tmp") / f"twotier-ray-{digest}"

    def node_ports(self) -> dict[str, int]:
        """Every fixed port of the node, derived from ``ray.gcs_port``."""
        gcs = self.settings.ray.gcs_port
        return {
            "port": gcs,
            "node-manager-port": gcs + 1,
            "object-manager-port": gcs + 2,
            "metrics-export-port": gcs + 3,
            "dashboard-agent-listen-port": gcs + 4,
            "dashboard-agent-grpc-port": gcs + 5,
            "runtime-env-agent-port": gcs + 6,
            "dashboard-port": gcs + 7,
            "ray-client-server-port": gcs + 8,
            "min-worker-port": gcs + WORKER_PORTS,
            "max-worker-port": gcs + 2 * WORKER_PORTS - 1,
        }

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        host = self.settings.ray.host
        fixed = [p for k, p in self.node_ports().items() if not k.endswith("worker-port")]
        return [(host, p) for p in fixed] + [(host, self.settings.ray.serve_port)]

    @property
    def endpoint(self) -> str:
        return serve_url(self.settings)

    # -- lifecycle hooks -----------------------------------------------------

    def install(self, progress: Progress = quiet) -> None:
        """Nothing to download: ``ray[serve]`` is a dependency of twotier."""
        return None

    def prepare(self, progress: Progress = quiet) -> None:
        """Create the temp folder; keep only the newest earlier session's logs there."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        sessions = sorted(self.temp_dir.glob("session_2*"), key=lambda p: p.stat().st_mtime)
        for old in sessions[:-1]:
            shutil.rmtree(old, ignore_errors=True)

    def command(self) -> list[str]:
        cfg = self.settings.ray
        ray_bin = str(Path(sys.executable).parent / "ray")
        ports = [f"--{flag}={port}" for flag, port in self.node_ports().items()]
        return [
            ray_bin,
            "start",
            "--head",
            "--block",
            f"--node-ip-address={cfg.host}",
            f"--num-cpus={cfg.num_cpus}",
            f"--object-store-memory={cfg.object_store_mb * 1024 * 1024}",
            "--include-dashboard=true",  # its REST API serves `serve deploy`
            f"--dashboard-host={cfg.host}",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *ports,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.to_env())  # workers and Serve replicas read the settings
        env.update(LOOPBACK_ENV)
        env["RAY_TMPDIR"] = str(self.temp_dir)
        env.pop("RAY_ADDRESS", None)
        return env

    def head_ready(self) -> bool:
        """The GCS accepts connections."""
        return port_open(self.settings.ray.host, self.settings.ray.gcs_port)

    def serve_healthy(self) -> bool:
        """The Serve HTTP proxy answers ``/-/healthz``.

        Before the first application is deployed the proxy answers 503 "Route table is
        not populated yet."; that still proves the proxy is up and serving.
        """
        try:
            response = httpx.get(f"{self.endpoint}/-/healthz", timeout=2.0)
        except httpx.HTTPError:
            return False
        if response.status_code == 200:
            return True
        return response.status_code == 503 and response.text.strip() == _NO_ROUTES_YET

    def healthy(self) -> bool:
        """The GCS is up and the Serve HTTP proxy answers its health route."""
        return self.head_ready() and self.serve_healthy()

    def wait_healthy(self, progress: Progress = quiet) -> None:
        """Wait for the head, start Serve on it if needed, then wait for the proxy."""
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        self._wait_until(self.head_ready, deadline, "the GCS did not open its port")
        app_missing = self.settings.serving.deploy_on_up and not serving_app_healthy(self.settings)
        if not self.serve_healthy() or app_missing:
            progress(f"{self.name}: starting Ray Serve and the serving app on {self.endpoint}")
            self._start_serve(deadline)
        self._wait_until(self.serve_healthy, deadline, "the Serve proxy did not answer")
        progress(f"{self.name}: healthy at {self.endpoint} (GCS {ray_address(self.settings)})")

    def _wait_until(self, check: Any, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(
                    self.name,
                    "the head node exited during start-up",
                    f"read the end of the log: tail -50 {self.log_file}",
                    self.log_file,
                )
            if check():
                return
            time.sleep(0.5)
        raise StackError(
            self.name,
            f"{what} within {self.settings.stack.start_timeout_s:.0f} s",
            f"read the log and {self.temp_dir}/session_latest/logs, or raise stack.start_timeout_s",
            self.log_file,
        )

    def _start_serve(self, deadline: float) -> None:
        env = self.environment()
        with open(self.log_file, "ab") as log:
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "twotier.infra.ray_service", "start-serve"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StackError(
                    self.name,
                    "starting Ray Serve timed out",
                    f"read the log: tail -50 {self.log_file}",
                    self.log_file,
                ) from exc
        if result.returncode != 0:
            raise StackError(
                self.name,
                f"starting Ray Serve failed with exit code {result.returncode}",
                f"read the log: tail -50 {self.log_file}",
                self.log_file,
            )

    # -- stopping ------------------------------------------------------------

    def node_processes(self) -> list[int]:
        """Every live process of this node: the head's group, its descendants, and any
        process holding files in the node's temp folder (workers that called setsid)."""
        head = self.pid()
        procs = _process_table()
        mine: set[int] = set()
        if head is not None:
            mine = {pid for pid, (_, pgid) in procs.items() if pgid == head}
            grew = True
            while grew:
                children = {pid for pid, (ppid, _) in procs.items() if ppid in mine}
                grew = not children <= mine
                mine |= children
        marker = str(self.temp_dir) + "/"
        for pid in procs:
            if pid not in mine and _uses_path(pid, marker):
                mine.add(pid)
        mine.discard(os.getpid())
        return sorted(mine)

    def stop(self) -> None:
        """End the head, its workers and Serve; nothing of this node is left running."""
        victims = self.node_processes()
        _signal_all(victims, signal.SIGTERM)
        # Ray drains for up to 30 s on SIGTERM; a local node has no state worth that wait.
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(pid_alive(p) for p in victims):
            for pid in victims:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        _signal_all([p for p in victims if pid_alive(p)], signal.SIGKILL)
        super().stop()  # the process group, in case anything joined it meanwhile
        # Whatever started after the first look (a worker being spawned) goes now; a
        # killed process takes a moment to leave the process table, so wait for that too.
        deadline = time.monotonic() + STOP_GRACE_S
        while (left := self.node_processes()) and time.monotonic() < deadline:
            _signal_all(left, signal.SIGKILL)
            time.sleep(0.2)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every live (non-zombie) process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def _uses_path(pid: int, prefix: str) -> bool:
    """Whether the process names ``prefix`` on its command line or holds a file under it."""
    try:
        if prefix.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(prefix):
                    return True
    except OSError:
        return False
    return False


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _main(argv: list[str]) -> int:
    if argv != ["start-serve"]:
        print("usage: python -m twotier.infra.ray_service start-serve", file=sys.stderr)
        return 2
    from twotier.config import load_settings

    start_serve(load_settings())
    print("ray: Serve started", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
