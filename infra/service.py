"""One local service of the stack: install (cached), start, health check, stop.

Every service writes its log to ``<data_dir>/logs/<name>.log``, keeps its data in
``<data_dir>/<name>/`` and its pid in ``<data_dir>/run/<name>.pid``. Services are
started in their own process group so that ``stop`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twotier.config import Settings
from twotier.errors import TwotierError
from twotier.progress import Progress, quiet

"""Receives one short line of progress (download, build, start)."""


class StackError(TwotierError):
    """A service could not be installed or started. The message names component, cause, fix."""

    def __init__(self, component: str, cause: str, fix: str, log: Path | None = None) -> None:
        self.component = component
        self.cause = cause
        self.fix = fix
        self.log = log
        where = f" (log: {log})" if log else ""
        super().__init__(f"{component}: {cause}. Fix: {fix}{where}")


@dataclass
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    endpoint: str
    detail: str = ""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether host:port can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def mongo_ping(endpoint: str) -> bool:
    """Whether a MongoDB-wire server at ``endpoint`` answers ``ping`` within half a second."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        endpoint, serverSelectionTimeoutMS=500, connectTimeoutMS=500, directConnection=True
    )
    try:
        return bool(client.admin.command("ping").get("ok"))
    except PyMongoError:
        return False
    finally:
        client.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Service(ABC):
    """A long-running local process of the stack.

    Subclasses declare ``name`` and ``ports`` and implement ``install``, ``command``
    and ``healthy``; the base class does pid files, logs, port checks and stopping.
    """

    name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- locations ---------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir / self.name

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache / self.name

    @property
    def log_file(self) -> Path:
        return self.settings.data_dir / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.settings.data_dir / "run" / f"{self.name}.pid"

    # -- what subclasses declare ---------------------------------------------

    @property
    @abstractmethod
    def ports(self) -> Sequence[tuple[str, int]]:
        """(host, port) pairs the service binds; all must be free before start."""

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where a person or client reaches the service (URL or host:port)."""

    @abstractmethod
    def install(self, progress: Progress = quiet) -> None:
        """Download or build what the service needs into the cache; a no-op when cached."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    def healthy(self) -> bool:
        """One quick check over the service's real protocol."""

    def describe(self) -> str:
        """One line for ``twotier status``: what runs, where (subclasses add licence, flags)."""
        return f"{self.name} at {self.endpoint}"

    def environment(self) -> dict[str, str]:
        """Environment of the service process."""
        return dict(os.environ)

    def prepare(self, progress: Progress = quiet) -> None:
        """First-start work after install (formatting storage, writing config)."""
        return None

    def after_stop(self) -> None:
        """Clean-up after the process group is gone (e.g. ``ray stop``)."""
        return None

    # -- lifecycle ---------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    port_grace_s: float = 10.0
    """How long a busy port may take to free up (a process of ours still exiting)."""

    def check_ports(self) -> None:
        """Raise StackError naming the first port that stays busy for ``port_grace_s``."""
        deadline = time.monotonic() + self.port_grace_s
        for host, port in self.ports:
            while not port_free(host, port) and time.monotonic() < deadline:
                time.sleep(0.25)
            if not port_free(host, port):
                raise StackError(
                    self.name,
                    f"port {host}:{port} is already in use by another process",
                    f"stop that process (`ss -ltnp | grep :{port}`) or set another port "
                    f"in twotier.yaml / TWOTIER_{self.name.upper()}__PORT",
                )

    def start(self, progress: Progress = quiet) -> None:
        """Start the service if it is not running, and wait until it is healthy.

        Raises:
            StackError: The process exited or did not become healthy in time; the
                process group this call started is stopped before the error propagates.
        """
        if self.running():
            if self.healthy():
                progress(f"{self.name}: already running")
                return
            self.wait_healthy(progress)
            return
        self.check_ports()
        self.install(progress)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.prepare(progress)
        progress(f"{self.name}: starting")
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.data_dir,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise StackError(
                self.name, f"cannot run {exc.filename}", "install it", self.log_file
            ) from exc
        finally:
            log.close()
        self.pid_file.write_text(str(proc.pid))
        try:
            self.wait_healthy(progress)
        except BaseException:
            # Never leave a half-started process group behind a failed start.
            self.stop()
            raise

    def wait_healthy(self, progress: Progress = quiet) -> None:
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None:
                raise StackError(
                    self.name,
                    "the process exited during start-up",
                    f"read the end of the log: tail -50 {self.log_file}",
                    self.log_file,
                )
            if self.healthy():
                progress(f"{self.name}: healthy at {self.endpoint}")
                return
            time.sleep(0.5)
        raise StackError(
            self.name,
            f"not healthy after {self.settings.stack.start_timeout_s:.0f} s",
            f"read the log, or raise stack.start_timeout_s: tail -50 {self.log_file}",
            self.log_file,
        )

    def stop(self) -> None:
        """Stop the whole process group; a no-op when not running."""
        pid = self.pid()
        if pid is not None:
            kill_group(pid)
        self.pid_file.unlink(missing_ok=True)
        self.after_stop()

    def status(self) -> ServiceStatus:
        pid = self.pid()
        healthy = pid is not None and self.healthy()
        return ServiceStatus(self.name, pid is not None, healthy, pid, self.endpoint)
