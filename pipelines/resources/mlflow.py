"""MLflow as a Dagster resource: the tracking server and model registry."""

from __future__ import annotations

from typing import Any

import dagster as dg
import onnx

from twotier.config import Settings
from twotier.registry import ModelVersionRef, register_onnx


class MLflowResource(dg.ConfigurableResource):
    """The MLflow server where models are logged, registered and aliased."""

    tracking_uri: str
    """``http://host:port`` of the MLflow server (also the registry)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MLflowResource:
        """The resource for ``settings.mlflow``."""
        return cls(tracking_uri=settings.mlflow.uri)

    def register_onnx(
        self,
        onnx_model: onnx.ModelProto,
        *,
        name: str,
        feature_names: list[str],
        experiment: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        alias: str | None = "champion",
    ) -> ModelVersionRef:
        """Log, register and alias an ONNX model (see ``twotier.registry.register_onnx``)."""
        return register_onnx(
            onnx_model,
            tracking_uri=self.tracking_uri,
            name=name,
            feature_names=feature_names,
            experiment=experiment,
            params=params,
            metrics=metrics,
            alias=alias,
        )
