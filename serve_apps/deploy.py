"""Deploying the scoring application onto a running Ray cluster, and scoring over HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from twotier.config import Settings
from twotier.errors import TwotierError

APP_NAME = "twotier"

Progress = Callable[[str], None]


class ServingError(TwotierError):
    """Deploying or calling the scoring application failed; the message names the fix."""


def _quiet(_: str) -> None:
    return None


def serve_url(settings: Settings) -> str:
    """Base URL of the Serve HTTP proxy of the local stack."""
    return f"http://{settings.ray.host}:{settings.ray.serve_port}"


def deploy(
    settings: Settings,
    progress: Progress = _quiet,
    *,
    alias_cache_ttl_s: float = 5.0,
    max_models_per_replica: int = 4,
    timeout_s: float = 120.0,
) -> None:
    """Deploy (or update in place) the scoring application on the running Ray cluster.

    Joins the cluster at ``settings.ray.address`` or the local head's GCS (through
    ``twotier.infra.ray_service.init_ray``, which keeps the driver on loopback), makes
    sure Serve's HTTP proxy listens on ``settings.ray.host:settings.ray.serve_port``,
    runs the app ``twotier`` at route prefix ``/`` against the MLflow registry at
    ``settings.mlflow.uri`` and waits until ``/healthz`` answers. Disconnects afterwards
    if it connected; the app keeps running in the cluster.

    Raises:
        ServingError: Ray is not reachable, or the app did not become healthy in time.
    """
    import ray
    from ray import serve

    # Deploying is a stack operation; the scoring app itself never imports infra.
    from twotier.infra.ray_service import init_ray, ray_address
    from twotier.serve_apps.scoring import ScoringArgs, build_app

    address = ray_address(settings)
    connected_here = not ray.is_initialized()
    if connected_here:
        progress(f"serving: joining the Ray cluster at {address}")
        try:
            init_ray(settings, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise ServingError(
                f"cannot join the Ray cluster at {address}: {exc}. "
                "Fix: start it with `twotier up` (or set ray.address)"
            ) from exc
    try:
        serve.start(
            http_options={"host": settings.ray.host, "port": settings.ray.serve_port},
            proxy_location="HeadOnly",
        )
        args = ScoringArgs(
            tracking_uri=settings.mlflow.uri,
            alias_cache_ttl_s=alias_cache_ttl_s,
            max_models_per_replica=max_models_per_replica,
        )
        progress(f"serving: deploying app {APP_NAME!r} (registry {args.tracking_uri})")
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        wait_healthy(settings, timeout_s)
        progress(f"serving: healthy at {serve_url(settings)}")
    finally:
        if connected_here:
            ray.shutdown()


def wait_healthy(settings: Settings, timeout_s: float = 60.0) -> None:
    """Poll ``/healthz`` until it answers 200.

    Raises:
        ServingError: No healthy answer within ``timeout_s``.
    """
    url = f"{serve_url(settings)}/healthz"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    raise ServingError(
        f"{url} not healthy after {timeout_s:.0f} s ({last}). "
        "Fix: look at the Serve logs under the Ray session's logs/serve folder"
    )


def score_over_http(
    settings: Settings,
    project: str,
    rows: Sequence[Sequence[float | None]] | None = None,
    *,
    features: Sequence[Mapping[str, float | None]] | None = None,
    model: str = "ranker",
    tier: str = "tier2",
    alias: str = "champion",
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """POST one scoring request to the running app and return the JSON answer.

    Send positional ``rows`` in the model's feature order, or named ``features``.

    Returns:
        ``{"model": name, "version": v, "alias": a, "scores": [...]}``.

    Raises:
        ServingError: The app is unreachable or answered with an error (its detail included).
    """
    body: dict[str, Any] = {"model": model, "tier": tier, "alias": alias}
    if features is not None:
        body["features"] = [dict(f) for f in features]
    else:
        body["rows"] = [list(r) for r in rows or []]
    url = f"{serve_url(settings)}/v1/{project}/score"
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServingError(
            f"cannot reach the scoring app at {url}: {exc}. Fix: `twotier up` then `twotier deploy`"
        ) from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ServingError(
            f"scoring {project} {tier}.{model}@{alias} failed: HTTP {response.status_code}: "
            f"{detail}"
        )
    result: dict[str, Any] = response.json()
    return result
