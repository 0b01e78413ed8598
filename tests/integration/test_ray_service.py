"""The real Ray head node: a Serve app over HTTP on loopback, and a stop that leaves nothing."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from twotier.config import Settings
from twotier.infra.ray_service import RayService, init_ray, ray_address, serve_url
from twotier.infra.service import Service, port_open

# Ray Serve 2.60 binds each replica's inter-deployment gRPC server to [::]:0 (hard-coded).
_KNOWN_WILDCARD_OWNERS = ("ray::ServeReplica",)


@pytest.fixture(scope="module")
def ray_driver(ray_cluster: Service) -> Iterator[Any]:
    """This test process connected to the stack's cluster as a Ray driver."""
    import ray

    init_ray(ray_cluster.settings, logging_level="warning")
    yield ray
    ray.shutdown()


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every TCP listener owned by ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        owners = fields[-1] if fields[-1].startswith("users:") else ""
        for chunk in owners.split("),("):
            if "pid=" not in chunk:
                continue
            pid = int(chunk.split("pid=")[1].split(",")[0])
            if pid in pids:
                found.append((fields[3], Path(f"/proc/{pid}/cmdline").read_bytes()[:40].decode()))
    return found


def test_address_helpers(settings: Settings) -> None:
    assert ray_address(settings) == f"127.0.0.1:{settings.ray.gcs_port}"
    assert serve_url(settings) == f"http://127.0.0.1:{settings.ray.serve_port}"
    external = settings.model_copy(
        update={"ray": settings.ray.model_copy(update={"address": "ray://h:1"})}
    )
    assert ray_address(external) == "ray://h:1"


def test_serve_app_answers_over_http_on_loopback(ray_cluster: Service, ray_driver: Any) -> None:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Echo:
        def __call__(self, request: Any) -> dict[str, str]:
            return {
                "q": request.query_params.get("q", ""),
                "serve_port": os.environ.get("TWOTIER_RAY__SERVE_PORT", ""),
                "node_ip": ray_driver.util.get_node_ip_address(),
            }

    name = f"echo_{uuid.uuid4().hex[:6]}"
    app = Echo.bind()  # type: ignore[attr-defined]  # added by @serve.deployment
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        response = httpx.get(f"{ray_cluster.endpoint}/{name}", params={"q": "hi"}, timeout=30)
        assert response.status_code == 200
        assert response.json() == {
            "q": "hi",
            "serve_port": str(ray_cluster.settings.ray.serve_port),  # settings reach replicas
            "node_ip": "127.0.0.1",
        }
        missing = httpx.get(f"{ray_cluster.endpoint}/no_such_app_{name}", timeout=30)
        assert missing.status_code == 404
        assert httpx.get(f"{ray_cluster.endpoint}/-/healthz", timeout=10).status_code == 200
    finally:
        serve.delete(name)


def test_every_node_port_is_on_loopback(ray_cluster: Service) -> None:
    assert isinstance(ray_cluster, RayService)
    listeners = _listening(set(ray_cluster.node_processes()))
    ports = {int(address.rsplit(":", 1)[1]) for address, _ in listeners}
    assert ray_cluster.settings.ray.gcs_port in ports
    assert ray_cluster.settings.ray.serve_port in ports
    exposed = [
        (address, owner)
        for address, owner in listeners
        if not address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:").startswith("127.")
        and not owner.startswith(_KNOWN_WILDCARD_OWNERS)
    ]
    assert exposed == []


def test_stop_leaves_no_process_of_the_node(ray_cluster: Service, ray_driver: Any) -> None:
    assert isinstance(ray_cluster, RayService)
    ray_driver.shutdown()  # this test process must not hold the node open
    before = ray_cluster.node_processes()
    assert len(before) >= 5  # head, GCS, raylet, Serve controller, proxy, ...
    try:
        ray_cluster.stop()
        assert ray_cluster.node_processes() == []
        assert not any(Path(f"/proc/{pid}").exists() and _is_live(pid) for pid in before)
        assert not port_open("127.0.0.1", ray_cluster.settings.ray.gcs_port)
        # The serve port is not checked closed: another stack's service may take it at once.
        assert not ray_cluster.running() and not ray_cluster.healthy()
    finally:
        ray_cluster.start()  # leave the session fixture as it was
    assert ray_cluster.healthy()


def _is_live(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
