"""Deploying the serving application onto a running Ray cluster, and calling it over HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, SecretStr

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


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """``settings`` as overrides a replica rebuilds them from exactly (secrets included)."""
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    for field in type(settings).model_fields:
        section = getattr(settings, field)
        if isinstance(section, BaseModel):
            for sub in type(section).model_fields:
                value = getattr(section, sub)
                if isinstance(value, SecretStr):
                    dumped[field][sub] = value.get_secret_value()
    return dumped


def deploy(
    settings: Settings,
    progress: Progress = _quiet,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    log_recommendations: bool = True,
    timeout_s: float = 180.0,
) -> None:
    """Deploy (or update in place) the serving application on the running Ray cluster.

    Joins the cluster at ``settings.ray.address`` or the local head's GCS (through
    ``twotier.infra.ray_service.init_ray``, which keeps the driver on loopback), makes
    sure Serve's HTTP proxy listens on ``settings.ray.host:settings.ray.serve_port``,
    runs the app ``twotier`` at route prefix ``/`` with exactly these settings and waits
    until ``/healthz`` answers. Disconnects afterwards if it connected; the app keeps
    running in the cluster.

    Args:
        settings: The stack; replicas get all of it (registry, stores, Kafka, serving).
        progress: Receives one line per step.
        options: Serve deployment options by deployment name (``Ingress``,
            ``ModelDirectory``, ``TierOneHost``, ``TierTwoHost``), e.g.
            ``{"TierTwoHost": {"num_replicas": 2}}``.
        log_recommendations: Send served recommendations to Kafka.
        timeout_s: How long to wait for the app to become healthy.

    Raises:
        ServingError: Ray is not reachable, or the app did not become healthy in time.
    """
    import ray
    from ray import serve

    # Deploying is a stack operation; the serving app itself never imports infra.
    from twotier.infra.ray_service import init_ray, ray_address
    from twotier.serve_apps.app import ServingArgs, build

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
        args = ServingArgs(
            settings=settings_overrides(settings), log_recommendations=log_recommendations
        )
        progress(f"serving: deploying app {APP_NAME!r} (registry {settings.mlflow.uri})")
        serve.run(build(args, options), name=APP_NAME, route_prefix="/", blocking=False)
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


def _post(
    settings: Settings,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    what: str,
    timeout_s: float,
) -> dict[str, Any]:
    url = f"{serve_url(settings)}{path}"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServingError(
            f"cannot reach the serving app at {url}: {exc}. Fix: `twotier up` (or `twotier deploy`)"
        ) from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ServingError(f"{what} failed: HTTP {response.status_code}: {detail}")
    result: dict[str, Any] = response.json()
    return result


def recommend_over_http(
    settings: Settings,
    project: str,
    user_id: str,
    n: int = 10,
    timeout_s: float = 30.0,
    **body: Any,
) -> dict[str, Any]:
    """POST ``/v1/{project}/recommend`` for one user; extra keyword arguments go in the body.

    Raises:
        ServingError: The app is unreachable or answered with an error (its detail included).
    """
    return _post(
        settings,
        f"/v1/{project}/recommend",
        {"user_id": user_id, "n": n, **body},
        {},
        f"recommending for user {user_id!r} of {project}",
        timeout_s,
    )


def second_tier_over_http(
    settings: Settings,
    project: str,
    user_id: str,
    candidates: Sequence[str],
    model: str = "ranker",
    group: str | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """POST ``/v1/{project}/second-tier-model``: rank ``candidates`` for one user with tier two.

    Args:
        settings: The stack; the app is reached at ``serve_url(settings)``.
        project: The project whose ranker scores.
        user_id: The user the candidates are ranked for.
        candidates: Item ids to rank.
        model: The ranker's model name within tier two.
        group: Serve this A/B group's model instead of the user's.
        timeout_s: How long to wait for the answer.

    Returns:
        The app's answer: ``{"ranking": [{"item_id", "score"}, ...], "models", "experiment",
        "group", ...}``.

    Raises:
        ServingError: The app is unreachable or answered with an error (its detail included).
    """
    body: dict[str, Any] = {"user_id": user_id, "candidates": list(candidates), "model": model}
    if group:
        body["group"] = group
    return _post(
        settings,
        f"/v1/{project}/second-tier-model",
        body,
        {},
        f"scoring {len(candidates)} items for user {user_id!r} of {project}",
        timeout_s,
    )


def move_serving_alias(
    settings: Settings,
    project: str,
    tier: str,
    model: str,
    alias: str = "champion",
    version: str | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """``POST /v1/admin/models``: move (or, without ``version``, re-resolve) an alias.

    Returns once every serving replica serves the version:
    ``{"name", "alias", "version", "previous_version", "replicas", "seconds"}``.

    Raises:
        ServingError: Unreachable, a wrong token, an unknown model/alias/version, or
            replicas that did not confirm in time; the message carries the app's detail.
    """
    token = settings.serving.admin_token.get_secret_value()
    body = {"project": project, "tier": tier, "model": model, "alias": alias, "version": version}
    return _post(
        settings,
        "/v1/admin/models",
        body,
        {"Authorization": f"Bearer {token}"},
        f"moving {project}.{tier}.{model}@{alias} to {version or 'its registry version'}",
        timeout_s,
    )
