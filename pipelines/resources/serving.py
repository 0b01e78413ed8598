"""The serving layer as a Dagster resource: tell it to load a promoted model version.

One call of the admin endpoint (``POST {url}/v1/admin/models``, bearer token) makes
every serving replica use ``<project>.<tier>.<model>@<alias>`` at the given version.
Serving also polls aliases, so a promotion whose call fails is picked up later anyway.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import httpx

from twotier.config import Settings
from twotier.errors import TwotierError

ADMIN_PATH = "/v1/admin/models"


class ServingUnavailable(TwotierError):
    """The serving layer could not be reached (connection refused, timeout)."""


class ServingAdminError(TwotierError):
    """The serving layer answered the admin call with an error status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServingResource(dg.ConfigurableResource):
    """The Ray Serve application's admin endpoint."""

    url: str
    """Base URL of the serving HTTP proxy, e.g. ``http://127.0.0.1:8000``."""
    admin_token: str
    """Bearer token of the admin endpoint (``settings.serving.admin_token``)."""
    deploy_after_promotion: bool = True
    """Whether promotion calls ``load_model`` (``settings.pipelines.deploy_after_promotion``)."""
    timeout_s: float = 120.0
    """How long one admin call may take (it answers once every replica serves the version)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingResource:
        """The resource for ``settings.serving`` on the local Ray Serve."""
        return cls(
            url=settings.serving.url(settings.ray),
            admin_token=settings.serving.admin_token.get_secret_value(),
            deploy_after_promotion=settings.pipelines.deploy_after_promotion,
        )

    def load_model(
        self,
        project: str,
        tier: str,
        model: str,
        alias: str,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Ask serving to serve ``<project>.<tier>.<model>@<alias>`` (at ``version`` if given).

        Args:
            project: The project.
            tier: ``tier1`` or ``tier2``.
            model: The model name within the tier (``candidates``, ``ranker``...).
            alias: The alias that moved (``champion`` or an experiment group's alias).
            version: The version the alias points at; None re-resolves the alias.

        Returns:
            The endpoint's answer: ``name``, ``alias``, ``version``, ``previous_version``.

        Raises:
            ServingUnavailable: Serving is not reachable at ``url``.
            ServingAdminError: Serving refused (401/403 token, 404 unknown model...).
        """
        endpoint = self.url.rstrip("/") + ADMIN_PATH
        body: dict[str, str | None] = {
            "project": project,
            "tier": tier,
            "model": model,
            "alias": alias,
            "version": None if version is None else str(version),
        }
        try:
            response = httpx.post(
                endpoint,
                json=body,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=self.timeout_s,
            )
        except httpx.TransportError as exc:
            raise ServingUnavailable(
                f"serving is not reachable at {endpoint} ({type(exc).__name__}: {exc}); it "
                "picks up the alias by polling, or deploy it with `twotier deploy`"
            ) from exc
        if response.status_code != 200:
            hint = {
                401: "send the admin token (settings.serving.admin_token)",
                403: "the admin token differs from serving's: set TWOTIER_SERVING__ADMIN_TOKEN",
                404: "serving does not know this project, model, alias or version",
            }.get(response.status_code, "see the serving logs")
            raise ServingAdminError(
                f"POST {endpoint} for {project}.{tier}.{model}@{alias} answered "
                f"{response.status_code}: {response.text[:300]}; {hint}",
                response.status_code,
            )
        answer: dict[str, Any] = response.json()
        return answer
