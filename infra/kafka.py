"""Kafka 4 in KRaft mode: one node that is both broker and controller, on loopback.

The official jars come from Maven Central into ``<cache>/kafka/<version>/libs``;
``server.properties``, the log segments and the KRaft metadata live in
``<data_dir>/kafka/``. Kafka logs through log4j2 to stdout, which the stack
writes to ``<data_dir>/logs/kafka.log``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from twotier.infra.maven import fetch_jars
from twotier.infra.service import Service, StackError
from twotier.progress import Progress, quiet

LOG4J_VERSION = "2.24.3"
"""The log4j2 release Kafka 4.x is built against; its slf4j 1.x binding is not transitive."""

LOG4J_TEMPLATE = Path(__file__).parent / "templates" / "kafka-log4j2.properties"


def java_executable(component: str) -> str:
    """The ``java`` on PATH.

    Raises:
        StackError: No Java runtime is on PATH.
    """
    java = shutil.which("java")
    if java is None:
        raise StackError(
            component,
            "no Java runtime (java) is on PATH",
            "install a JDK 17 or newer (e.g. apt-get install openjdk-17-jre-headless) "
            "and put its bin folder on PATH",
        )
    return java


def random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (like Kafka's)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaService(Service):
    """A single-node Kafka 4 cluster (KRaft, broker + controller) on ``settings.kafka``."""

    name = "kafka"

    # -- locations ---------------------------------------------------------

    @property
    def libs_dir(self) -> Path:
        """The Kafka jars and their runtime dependencies."""
        return self.cache_dir / self.settings.kafka.version / "libs"

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        """Where the broker keeps topic partitions and the KRaft metadata log."""
        return self.data_dir / "kraft-data"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        cfg = self.settings.kafka
        return [(cfg.host, cfg.port), (cfg.host, cfg.controller_port)]

    @property
    def endpoint(self) -> str:
        return self.settings.kafka.bootstrap

    # -- install / prepare ---------------------------------------------------

    def install(self, progress: Progress = quiet) -> None:
        """Fetch ``kafka_2.13:<version>``, its runtime deps and the log4j2 slf4j binding (cached).

        Raises:
            StackError: Maven is missing or a jar could not be fetched.
        """
        version = self.settings.kafka.version
        fetch_jars(
            self.name,
            [
                f"org.apache.kafka:kafka_2.13:{version}",
                f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
            ],
            self.libs_dir,
            progress=progress,
        )

    def render_properties(self) -> str:
        """The combined broker + controller ``server.properties`` of the local node."""
        cfg = self.settings.kafka
        controller = f"{cfg.host}:{cfg.controller_port}"
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{controller}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "-1",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        body = "\n".join(f"{key}={value}" for key, value in lines.items())
        return f"# Written by twotier on every start; edit twotier.yaml instead.\n{body}\n"

    def prepare(self, progress: Progress = quiet) -> None:
        """Write ``server.properties``; on first start format the KRaft storage.

        Raises:
            StackError: Java is missing or the storage could not be formatted.
        """
        java = java_executable(self.name)
        self.server_properties.write_text(self.render_properties())
        if (self.log_dirs / "meta.properties").exists():
            return
        cluster_id = random_cluster_id()
        progress(f"{self.name}: formatting KRaft storage (cluster id {cluster_id})")
        args = [
            java, *self._jvm_options(256), "kafka.tools.StorageTool", "format", "--standalone",
            "-t", cluster_id, "-c", str(self.server_properties),
        ]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            self.log_file.write_text(result.stdout + result.stderr)
            raise StackError(
                self.name,
                f"formatting the KRaft storage in {self.log_dirs} failed",
                f"read the log; if {self.log_dirs} holds another cluster's data, remove it",
                self.log_file,
            )

    # -- run -------------------------------------------------------------------

    def _jvm_options(self, heap_mb: int) -> list[str]:
        return [
            f"-Xmx{heap_mb}m",
            f"-Xms{min(heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j2.configurationFile={LOG4J_TEMPLATE}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{self.libs_dir}/*",
        ]

    def command(self) -> list[str]:
        java = java_executable(self.name)
        opts = self._jvm_options(self.settings.kafka.heap_mb)
        return [java, *opts, "kafka.Kafka", str(self.server_properties)]

    def healthy(self) -> bool:
        """Lists topics over the Kafka protocol with second-scale timeouts."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.endpoint,
                client_id="twotier-health",
                request_timeout_ms=2000,
                bootstrap_timeout_ms=2000,
                reconnect_backoff_max_ms=200,
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
