"""The online feature job as a detached background process: start, find, stop, lag.

One process per project runs ``python -m twotier.feature_jobs online --project P`` (the
job of ``twotier stream``) in its own session, so it outlives whoever started it (a
Dagster run, a shell). Files under the data folder::

    <data_dir>/jobs/<project>/online.pid   {"pid": 4242, "start_ticks": 991, ...} (JSON)
    <data_dir>/jobs/<project>/online.log   the job's stdout and stderr (appended)
    <data_dir>/jobs/<project>/online.json  its last batch report (``feature_jobs.status``)

The pid file is the *intent*: it exists from ``start_online`` to ``stop_online``, so a
watchdog restarts a job whose pid file names a process that is gone, and leaves alone a
job that was stopped on purpose. A process is identified by its pid *and* its start time
(``/proc/<pid>/stat``), so a reused pid is never mistaken for the job. Starting and
stopping hold ``online.pid.lock``: two callers (the Dagster daemon and a person) never
start the same job twice.

The Dagster job ``<project>_deploy_streaming``, its watchdog sensor and the
``twotier stream-start`` / ``stream-stop`` commands all go through this module. It does
not import pyspark.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from twotier.config import LOOPBACK, Settings
from twotier.errors import TwotierError
from twotier.feature_jobs.status import (
    KafkaOffsets,
    lag_of,
    processed_offsets,
    read_status,
    status_path,
)
from twotier.infra.service import pid_alive
from twotier.naming import check_project, events_topic

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0
"""How long a stop waits for the job to finish its batch after SIGTERM before SIGKILL."""


class DetachedJobError(TwotierError):
    """The detached online job could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class OnlineProcess:
    """A started online job, as recorded in its pid file.

    Attributes:
        project: The project whose events it reads.
        pid: The process id (also its process group id: it leads its own session).
        start_ticks: The process start time from ``/proc/<pid>/stat`` (clock ticks after
            boot), which tells the job apart from a later process with the same pid.
        started_at: When it was started (ISO 8601, UTC).
        command: Its command line.
        log: Its log file.
    """

    project: str
    pid: int
    start_ticks: int
    started_at: str
    command: list[str]
    log: str

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a reused pid)."""
        return pid_alive(self.pid) and start_ticks_of(self.pid) == self.start_ticks


@dataclass(frozen=True)
class StartResult:
    """What ``start_online`` did: ``started`` is False when the job was already running."""

    process: OnlineProcess
    started: bool


# -- locations ---------------------------------------------------------------


def pid_path(settings: Settings, project: str) -> Path:
    """The pid file of the project's detached online job."""
    return status_path(settings, check_project(project)).with_name("online.pid")


def log_path(settings: Settings, project: str) -> Path:
    """The log file of the project's detached online job."""
    return status_path(settings, check_project(project)).with_name("online.log")


def _lock(settings: Settings, project: str) -> FileLock:
    path = pid_path(settings, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")), timeout=STOP_TIMEOUT_S + 30)


# -- processes ---------------------------------------------------------------


def start_ticks_of(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks after boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3 (state)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the job and its Spark JVM)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def online_job_command(settings: Settings, project: str) -> list[str]:
    """The command line of the project's online job (the one ``twotier stream`` runs).

    The driver runs here and its executors wherever ``settings.spark.master`` says
    (``local[N]`` in this process group; ``spark://``/``yarn``/``k8s://`` in client mode).
    For cluster deploy mode, spark-submit the same entry point instead (see
    docs/feature_jobs.md, "On Kubernetes").
    """
    return [sys.executable, "-m", "twotier.feature_jobs", "online", "--project", project]


def job_environment(settings: Settings) -> dict[str, str]:
    """The environment of the detached job: this one plus ``settings`` as ``TWOTIER_*``."""
    env = {**os.environ, **settings.to_env()}
    if settings.spark.master.startswith("local"):
        env["SPARK_LOCAL_IP"] = LOOPBACK
    return env


def read_process(settings: Settings, project: str) -> OnlineProcess | None:
    """The process the pid file names (alive or not), or None when none was started."""
    path = pid_path(settings, project)
    try:
        data = json.loads(path.read_text())
        return OnlineProcess(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("unreadable pid file %s (%s): treating the job as not started", path, exc)
        return None


def running_process(settings: Settings, project: str) -> OnlineProcess | None:
    """The project's detached online job if it is alive, else None."""
    process = read_process(settings, project)
    return process if process is not None and process.alive() else None


def _kill_leftovers(process: OnlineProcess) -> None:
    """SIGKILL what is left of a dead job's process group (a JVM that outlived its driver)."""
    if start_ticks_of(process.pid) not in (None, process.start_ticks):
        return  # the pid (and so the group id) belongs to another process now
    for pid in group_members(process.pid):
        ticks = start_ticks_of(pid)
        if ticks is not None and ticks >= process.start_ticks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def start_online(
    settings: Settings,
    project: str,
    *,
    restart: bool = False,
    progress: Callable[[str], None] = log.info,
) -> StartResult:
    """Start the project's online job in the background unless it already runs.

    Args:
        settings: Passed to the job as ``TWOTIER_*`` variables; ``data_dir`` holds the
            pid file, the log, the checkpoint and the status.
        project: A declared project with an online feature group.
        restart: Stop a running job first (for a job whose lag keeps growing).
        progress: Receives one line per step.

    Returns:
        The running process and whether this call started it.

    Raises:
        DetachedJobError: The process exited at once (the message quotes its log).
        ConfigError: The project is not declared.
    """
    settings.project_features(project)
    with _lock(settings, project):
        current = read_process(settings, project)
        if current is not None and current.alive():
            if not restart:
                progress(f"online job {project}: already running (pid {current.pid})")
                return StartResult(current, started=False)
            progress(f"online job {project}: restarting pid {current.pid}")
            _stop(current)
        elif current is not None:
            progress(f"online job {project}: pid {current.pid} is gone; starting a new one")
            _kill_leftovers(current)
        process = _spawn(settings, project)
        progress(f"online job {project}: started pid {process.pid} (log {process.log})")
    return StartResult(process, started=True)


def _spawn(settings: Settings, project: str) -> OnlineProcess:
    command = online_job_command(settings, project)
    log_file = log_path(settings, project)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log_file, "ab") as out:
        out.write(f"\n--- {now} twotier: starting {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=job_environment(settings),
            cwd=settings.data_dir,
            start_new_session=True,
        )
    ticks = start_ticks_of(proc.pid)
    if ticks is None:
        proc.wait()
        raise DetachedJobError(
            f"online job {project}: exited at once with code {proc.returncode}; "
            f"read {log_file}: {tail(log_file)}"
        )
    process = OnlineProcess(project, proc.pid, ticks, now, command, str(log_file))
    path = pid_path(settings, project)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(process), indent=1) + "\n")
    os.replace(tmp, path)
    return process


def _stop(process: OnlineProcess, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the driver (it stops its query after the batch and Spark with it), then
    SIGKILL the whole process group after ``timeout_s``."""
    for wait_s in (timeout_s, 10.0):
        if wait_s == timeout_s:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signal.SIGTERM)
                os.killpg(process.pid, signal.SIGCONT)  # a stopped (hung) job must see it
        else:
            _kill_leftovers(process)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, os.WNOHANG)
            if not process.alive() and not group_members(process.pid):
                return
            time.sleep(0.2)
    if process.alive():
        raise DetachedJobError(
            f"online job {process.project}: pid {process.pid} survived SIGKILL; "
            f"check it with `ps -o pid,stat,cmd -g {process.pid}`"
        )


def stop_online(
    settings: Settings, project: str, timeout_s: float = STOP_TIMEOUT_S
) -> OnlineProcess | None:
    """Stop the project's detached online job and remove its pid file (so no watchdog
    restarts it).

    Args:
        settings: Where the pid file is.
        project: The project.
        timeout_s: How long the job may take to finish its batch after SIGTERM.

    Returns:
        The process that was stopped, or None when none was running.

    Raises:
        DetachedJobError: The process could not be killed.
    """
    with _lock(settings, project):
        process = read_process(settings, project)
        running = process if process is not None and process.alive() else None
        if running is not None:
            _stop(running, timeout_s)
        elif process is not None:
            _kill_leftovers(process)
        pid_path(settings, project).unlink(missing_ok=True)
    return running


def deployed(settings: Settings, project: str) -> bool:
    """Whether the job was started and not stopped on purpose (its pid file exists)."""
    return pid_path(settings, project).exists()


# -- health ------------------------------------------------------------------


def current_lag(settings: Settings, project: str) -> int | None:
    """Kafka records of the project's topic that the online job has not processed yet.

    Reads the end offsets from Kafka now and the offsets of the job's latest micro-batch
    from its checkpoint (so a job that stopped making batches shows a growing lag even
    though its status file is stale). None when Kafka does not answer or the topic does
    not exist.
    """
    from twotier.feature_jobs.online_job import online_checkpoint  # imports pyspark (no JVM)

    offsets = KafkaOffsets(settings)
    try:
        end = offsets.end_offsets(events_topic(project))
    except Exception as exc:  # Kafka down or restarting: no reading this time
        log.info("no Kafka end offsets for the lag of %s: %s", project, exc)
        return None
    finally:
        offsets.close()
    if not end:
        return None
    checkpoint = online_checkpoint(settings, project)
    batch_ids = [int(p.name) for p in (checkpoint / "offsets").glob("*") if p.name.isdigit()]
    processed = processed_offsets(checkpoint, max(batch_ids)) if batch_ids else {}
    return sum(lag_of(end, processed).values())


def last_report(settings: Settings, project: str) -> dict[str, Any] | None:
    """The job's last status report (``feature_jobs.status``)."""
    return read_status(settings, project)


def tail(path: Path | str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
