"""The local stack: every service in start order, brought up and down together."""

from __future__ import annotations

import importlib

from twotier.config import Settings
from twotier.infra.service import Service, ServiceStatus, StackError
from twotier.progress import Progress, quiet

# name -> "module:Class", in start order. Lazy so `twotier status` stays fast.
SERVICE_CLASSES: dict[str, str] = {
    "kafka": "twotier.infra.kafka:KafkaService",
    "secantusdb": "twotier.infra.secantusdb:SecantusDBService",
    "ferretdb": "twotier.infra.ferretdb:FerretDBService",
    "mlflow": "twotier.infra.mlflow_server:MLflowService",
    "dagster": "twotier.infra.dagster_service:DagsterService",
    "ray": "twotier.infra.ray_service:RayService",
}


ONLINE_STORE = "online_store"
"""Stands for the local MongoDB-wire server chosen in ``stack.online_server``."""


def make_service(name: str, settings: Settings) -> Service:
    """The service called ``name`` (``online_store``: the chosen MongoDB-wire server)."""
    if name == ONLINE_STORE:
        name = settings.local_online_server
    module, cls = SERVICE_CLASSES[name].split(":")
    service: Service = getattr(importlib.import_module(module), cls)(settings)
    return service


class Stack:
    """The services named in ``settings.stack.services``, in start order."""

    def __init__(self, settings: Settings, only: list[str] | None = None) -> None:
        self.settings = settings
        wanted: list[str] = list(settings.stack.resolved_services())
        if settings.online_store.uri and ONLINE_STORE in settings.stack.services:
            # An external online store (online_store.uri): no local server for it.
            explicit = set(settings.stack.services)
            wanted = [n for n in wanted if n != settings.local_online_server or n in explicit]
        names = [n for n in SERVICE_CLASSES if n in wanted]
        if only:
            unknown = sorted(set(only) - set(SERVICE_CLASSES) - {ONLINE_STORE})
            if unknown:
                raise StackError(
                    "stack",
                    f"unknown service(s) {unknown}",
                    f"choose from {[*SERVICE_CLASSES, ONLINE_STORE]}",
                )
            # Named explicitly: acted on even when not among stack.services.
            only = [settings.local_online_server if n == ONLINE_STORE else n for n in only]
            names = [n for n in SERVICE_CLASSES if n in only]
        self.services = [make_service(n, settings) for n in names]

    def install(self, progress: Progress = quiet) -> None:
        """Download and build everything the services and Spark need (cached)."""
        from twotier.infra.spark import ensure_spark_jars

        for service in self.services:
            service.install(progress)
        ensure_spark_jars(self.settings, progress)

    def up(self, progress: Progress = quiet) -> None:
        """Start every service that is not running; idempotent.

        On any failure the services this call started are stopped again, so no
        half-started stack is left behind, and the error is re-raised.
        """
        from twotier.infra.spark import ensure_spark_jars

        ensure_spark_jars(self.settings, progress)
        started: list[Service] = []
        try:
            for service in self.services:
                was_running = service.running()
                service.start(progress)
                if not was_running:
                    started.append(service)
        except BaseException:
            for service in reversed(started):
                progress(f"{service.name}: stopping (start-up of the stack failed)")
                service.stop()
            raise

    def down(self, progress: Progress = quiet) -> None:
        """Stop every service, last started first."""
        for service in reversed(self.services):
            if service.running():
                progress(f"{service.name}: stopping")
            service.stop()

    def status(self) -> list[ServiceStatus]:
        return [s.status() for s in self.services]
