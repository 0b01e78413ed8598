"""A serving replica's environment: ``twotier[serving]`` holds neither Spark nor Dagster, and
the serving app imports and answers there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import importlib.util
import twotier.serve_apps.app, twotier.serve_apps.hosts, twotier.serve_apps.deploy
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "dagster", "xgboost"})
missing = [m for m in ("pyspark", "dagster") if importlib.util.find_spec(m) is None]
print(loaded, missing)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_serving_extra_installs_no_spark_or_dagster_and_the_app_answers(
    tmp_path: Path,
) -> None:
    env_dir = tmp_path / "serving-env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
         "-e", f"{REPO}[serving]"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"\ntwotier[serving] installed in {time.monotonic() - started:.0f} s")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, timeout=300, env=clean
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == "[] ['pyspark', 'dagster']", probe.stdout

    port = _free_port()
    server = subprocess.Popen(
        [str(python), "-m", "uvicorn", "twotier.serve_apps.app:api",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                time.sleep(1)
        assert answer is not None and answer.status_code == 200
        assert "/v1/{project}/recommend" in answer.json()["paths"]
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200 and "/static-offline-docs/" in docs.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sys.executable != str(python)
