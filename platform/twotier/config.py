"""Typed configuration: ``twotier.yaml`` plus ``TWOTIER_*`` environment variables.

Precedence (highest first): keyword arguments, environment variables
(``TWOTIER_KAFKA__PORT=19092`` sets ``kafka.port``), the YAML file, defaults.
Defaults point at the local stack on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from twotier.features.builtin import builtin_projects
from twotier.features.spec import ProjectFeatures

CONFIG_FILE_ENV = "TWOTIER_CONFIG"
DEFAULT_CONFIG_FILE = "twotier.yaml"
LOOPBACK = "127.0.0.1"
PROJECT_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names file, field and fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(_Section):
    """Kafka broker. The local stack runs one KRaft node (broker + controller)."""

    host: str = LOOPBACK
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    version: str = "4.1.1"
    heap_mb: int = Field(512, ge=128)
    bootstrap_servers: str | None = None
    """Set to use an external cluster; defaults to ``host:port``."""

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


MongoServerKind = Literal["mongodb", "secantusdb", "ferretdb"]
"""Which MongoDB-wire server an online-store URI reaches; it declares what the server can do."""


class OnlineStoreCapabilitiesConfig(_Section):
    """Overrides of the capabilities declared for ``online_store.server`` (unset: declared)."""

    transactions: bool | None = None
    change_streams: bool | None = None
    indexed_in: bool | None = None
    bulk_upsert: bool | None = None
    union_reads: bool | None = None
    statements_per_command: int | None = Field(None, ge=1)


class MongoDBOnlineStoreConfig(_Section):
    """Online store on the MongoDB wire protocol (SecantusDB locally, MongoDB in production).

    The code speaks plain pymongo; ``server`` only selects the declared capabilities
    (chunk sizes, upsert strategy, one-round-trip unions) that the hot paths use.
    """

    type: Literal["mongodb"] = "mongodb"
    uri: str | None = None
    """Defaults to the local stack's MongoDB-wire server (``stack.online_server``)."""
    database: str = "twotier"
    server: MongoServerKind | None = None
    """The server behind ``uri``; defaults to ``stack.online_server`` without a ``uri``
    and to ``mongodb`` (a real MongoDB) with one."""
    journal: bool = True
    """Write concern ``j``: a write is acknowledged once it is in the server's journal."""
    batch_transactions: bool = True
    """Where the server has transactions, write each chunk of a batch in one transaction:
    one journal flush per chunk instead of one per document, which is what durable commits
    cost (``bench/results/online_store.json``). Exactly once either way."""
    capabilities: OnlineStoreCapabilitiesConfig = Field(
        default_factory=OnlineStoreCapabilitiesConfig
    )
    """Override single declared capabilities, e.g. ``{union_reads: false}``."""


# One backend per store today; a second one turns these into discriminated unions on `type`.
OnlineStoreConfig = MongoDBOnlineStoreConfig


class ClickHouseOfflineStoreConfig(_Section):
    """Offline store on ClickHouse through clickhouse-connect.

    ``dsn`` is ``chdb:///path`` for the embedded engine (the default, under the
    data folder) or ``http(s)://user:password@host:port`` for a server.
    """

    type: Literal["clickhouse"] = "clickhouse"
    dsn: str | None = None
    database: str = "twotier"
    lock_timeout_s: float = Field(120.0, gt=0)
    """How long a process waits for the embedded engine's single-process lock."""


OfflineStoreConfig = ClickHouseOfflineStoreConfig


class SecantusDBConfig(_Section):
    """The default local MongoDB-wire server: SecantusDB ``secantusd-rs`` on WiredTiger.

    Built once with ``cargo +<toolchain> install secantus-mdb`` into the cache; GPL-2.0,
    run as a separate server process (never linked into twotier).
    """

    host: str = LOOPBACK
    port: int = Field(27017, ge=1, le=65535)
    version: str = "0.5.3-beta.196"
    toolchain: str = "nightly"
    """The rustup toolchain that builds it (its crates declare a Rust newer than stable)."""
    sync_on_commit: bool = True
    """Fsync the WiredTiger log on every commit. Without it a probe saw a kill -9 lose an
    acknowledged write, even with ``j: true``."""
    cache_size: str = Field("512M", pattern=r"^\d+[KMG]$")
    """WiredTiger cache (the server's default is 4G)."""
    log_file_max: str = Field("64MB", pattern=r"^\d+[KMG]B$")
    """Size of one write-ahead log file, allocated in full."""


class FerretDBConfig(_Section):
    """The alternative local MongoDB-wire server: FerretDB v1 with the SQLite backend."""

    host: str = LOOPBACK
    port: int = Field(27018, ge=1, le=65535)
    version: str = "v1.24.2"


class MLflowConfig(_Section):
    """MLflow tracking server and model registry."""

    host: str = LOOPBACK
    port: int = Field(5000, ge=1, le=65535)
    tracking_uri: str | None = None
    """Set to use an external server; defaults to ``http://host:port``."""

    @property
    def uri(self) -> str:
        return self.tracking_uri or f"http://{self.host}:{self.port}"


class DagsterConfig(_Section):
    """Dagster webserver and daemon on the project's code location."""

    host: str = LOOPBACK
    port: int = Field(3000, ge=1, le=65535)


class RayConfig(_Section):
    """Local Ray head node and Ray Serve HTTP proxy."""

    host: str = LOOPBACK
    gcs_port: int = Field(6379, ge=1, le=65535)
    serve_port: int = Field(8000, ge=1, le=65535)
    num_cpus: int = Field(2, ge=1)
    object_store_mb: int = Field(256, ge=78)
    address: str | None = None
    """Set to join an existing cluster (``ray://`` or ``host:port``)."""


class SparkConfig(_Section):
    """Spark for the feature jobs; the Kafka connector jars come from the cache."""

    master: str = "local[2]"
    version: str = "4.2.0"
    """Must equal the installed pyspark version; the connector jars are fetched for it."""
    scala: str = "2.13"
    driver_memory: str = "1g"
    trigger_seconds: int = Field(5, ge=1, le=60)


class ServingConfig(_Section):
    """The Ray Serve application: limits, caches and the admin token."""

    admin_token: SecretStr = SecretStr("twotier-local-admin")
    """Bearer token of ``POST /v1/admin/models``; set ``TWOTIER_SERVING__ADMIN_TOKEN``
    to a secret anywhere but a laptop."""
    max_candidates: int = Field(1000, ge=1)
    """Candidates one tier-two request may carry; more is refused with 413."""
    default_k: int = Field(500, ge=1)
    """Tier-one candidates of ``/first-tier-model`` unless the request asks for another K
    (``/recommend`` sends the ranker its declared ``candidates`` instead)."""
    feature_cache_ttl_s: float = Field(2.0, ge=0, le=60)
    """Staleness bound of the item documents a replica caches per entity (0 turns the
    cache off); users' own documents are read fresh on every request."""
    experiment_generation_ttl_s: float = Field(1.0, ge=0, le=60)
    """How long a replica keeps an experiment's shuffle generation read from the online
    store; after ``twotier experiments shuffle`` new requests get new cohorts within it."""
    alias_poll_s: float = Field(5.0, gt=0)
    """How often aliases are re-read from the registry (moves made in the MLflow UI)."""
    model_memory_budget_bytes: int = Field(2 * 1024**3, ge=1)
    """Bytes of ONNX models one replica keeps loaded; least recently used beyond it go."""
    deploy_on_up: bool = True
    """``twotier up`` deploys the serving application once Ray Serve runs."""
    feature_log_fraction: float = Field(0.01, ge=0, le=1)
    """Share of ``/recommend`` requests whose served items log their tier-two input row
    (context ``features``) for the training/serving skew check; 0 logs none, 1 every one."""

    @model_validator(mode="after")
    def _k_within_cap(self) -> ServingConfig:
        if self.default_k > self.max_candidates:
            raise ValueError(
                f"default_k ({self.default_k}) is more than max_candidates "
                f"({self.max_candidates}): every request without k would be refused; "
                "lower default_k or raise max_candidates"
            )
        return self

    def url(self, ray: RayConfig) -> str:
        """Base URL of the HTTP proxy of the local Ray Serve."""
        return f"http://{ray.host}:{ray.serve_port}"


_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_CRON_NAMES = {3: {m: i + 1 for i, m in enumerate(_MONTHS)}, 4: {d: i for i, d in enumerate(_DAYS)}}


def check_cron(expression: str) -> None:
    """Refuse anything but a five-field cron expression (``*``, lists, ranges, steps, names).

    Raises:
        ValueError: The expression, naming the field at fault and an example.

    Example:
        >>> check_cron("*/15 9-17 * * mon-fri")
        >>> check_cron("not a cron")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 'not a cron' is not a cron expression: it needs 5 fields ...
    """
    fields = expression.split()
    example = "e.g. '0 * * * *' (hourly)"
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} is not a cron expression: it needs 5 fields (minute hour "
            f"day-of-month month day-of-week), {example}"
        )
    for index, (text, (name, low, high)) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        names = _CRON_NAMES.get(index, {})

        def number(token: str, name: str = name, names: dict[str, int] = names) -> int:
            value = names.get(token.lower())
            if value is None:
                if not token.isdigit():
                    raise ValueError(token)
                value = int(token)
            return value

        for part in text.split(","):
            base, _, step = part.partition("/")
            try:
                if step and (not step.isdigit() or int(step) == 0):
                    raise ValueError(step)
                if base != "*":
                    bounds = [number(t) for t in base.split("-")]
                    if len(bounds) > 2 or any(not low <= b <= high for b in bounds):
                        raise ValueError(base)
            except ValueError:
                raise ValueError(
                    f"{expression!r}: {name} field {text!r} is not valid (use *, numbers "
                    f"{low}-{high}, ranges a-b, lists a,b and steps */n), {example}"
                ) from None


class PipelinesConfig(_Section):
    """Dagster pipelines: retraining cadence and promotion."""

    retrain_schedule_running: bool = False
    """Start the hourly retrain schedule as running (off locally, on in production)."""
    retrain_cron: str = "0 * * * *"
    """When the retrain schedule runs (UTC): five cron fields, e.g. ``0 * * * *`` hourly."""

    readout_cron: str = "15 * * * *"
    """When the readout schedule refreshes yesterday's and today's experiment readouts
    (UTC, five cron fields); it runs when ``retrain_schedule_running`` is set."""

    @field_validator("retrain_cron", "readout_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        check_cron(value)
        return value

    deploy_after_promotion: bool = True
    """After an alias moves, ask the serving layer to load the new version at once."""
    partitions_start: str = Field("1996-01-01", pattern=r"^\d{4}-\d{2}-01$")
    """First month (``YYYY-MM-01``) of the monthly training-set partitions; the default
    suits MovieLens (1996-2018), a live feed sets the month its events start."""
    readout_start: str = Field("2026-11-01", pattern=r"^\d{4}-\d{2}-\d{2}$")
    """First day (``YYYY-MM-DD``, UTC) of the daily partitions of the experiment readouts
    and the skew check: recommendations are logged at serve time, so days start here."""
    retrain_min_new_events: int = Field(1000, ge=1)
    """New offline events that make the new-data sensor request a retrain."""
    watchdog_growth_evaluations: int = Field(3, ge=1)
    """Evaluations in a row of growing Kafka lag after which the watchdog restarts the
    streaming job."""
    skew_max_mismatch_rate: float = Field(0.05, ge=0, le=1)
    """The skew check fails when a feature's served values differ from the offline
    point-in-time values in more than this share of the sampled rows."""
    skew_min_rows: int = Field(50, ge=0)
    """Below this many sampled rows the skew check passes with a warning (too few to judge)."""


OnlineServerName = Literal["secantusdb", "ferretdb"]
"""The local MongoDB-wire servers the stack can run."""
ServiceName = Literal["kafka", "online_store", "secantusdb", "ferretdb", "mlflow", "dagster", "ray"]
"""``online_store`` stands for the server chosen in ``stack.online_server``."""
ALL_SERVICES: tuple[ServiceName, ...] = ("kafka", "online_store", "mlflow", "dagster", "ray")


class StackConfig(_Section):
    """Which services ``twotier up`` runs locally, and how long each may take to start."""

    online_server: OnlineServerName = "secantusdb"
    """The local MongoDB-wire server of the online store: ``secantusdb`` (fast, with
    change streams and transactions) or ``ferretdb`` (v1, SQLite; scans on ``$in``)."""
    services: Annotated[list[ServiceName], NoDecode] = Field(
        default_factory=lambda: list(ALL_SERVICES)
    )
    """Services ``twotier up`` runs; ``online_store`` stands for ``online_server``. In the
    environment a comma-separated list: ``TWOTIER_STACK__SERVICES=kafka,ferretdb``."""

    @field_validator("services", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    start_timeout_s: float = Field(180.0, gt=0)

    def resolved_services(self) -> list[ServiceName]:
        """``services`` with ``online_store`` replaced by the chosen ``online_server``."""
        out: list[ServiceName] = []
        for name in self.services:
            real: ServiceName = self.online_server if name == "online_store" else name
            if real not in out:
                out.append(real)
        return out


class Settings(BaseSettings):
    """All of twotier's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTIER_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path(".twotier")
    """Logs, data and pid files of the local stack."""
    cache_dir: Path | None = None
    """Downloads and builds, shared by every clone; defaults to ``$XDG_CACHE_HOME/twotier``
    (``~/.cache/twotier``)."""
    project: str = Field("movielens", pattern=PROJECT_PATTERN)
    """The default project for commands that take ``--project``."""
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    secantusdb: SecantusDBConfig = Field(default_factory=SecantusDBConfig)
    ferretdb: FerretDBConfig = Field(default_factory=FerretDBConfig)
    online_store: OnlineStoreConfig = Field(default_factory=MongoDBOnlineStoreConfig)
    offline_store: OfflineStoreConfig = Field(default_factory=ClickHouseOfflineStoreConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    dagster: DagsterConfig = Field(default_factory=DagsterConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig)
    projects: dict[str, ProjectFeatures] = Field(default_factory=builtin_projects)
    """Feature groups and model features per project; defaults: movielens and memes."""

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        for name in self.projects:
            if not re.match(PROJECT_PATTERN, name):
                raise ValueError(
                    f"projects: invalid project name {name!r}: use 1-40 lowercase letters, "
                    "digits or '_', starting with a letter"
                )
        if self.projects and self.project not in self.projects:
            if "project" in self.model_fields_set:
                raise ValueError(
                    f"project: {self.project!r} is not a declared project; declared: "
                    f"{sorted(self.projects)} (under `projects:` in twotier.yaml)"
                )
            self.project = next(iter(self.projects))  # the default names no project
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.cache_dir is not None:
            self.cache_dir = self.cache_dir.expanduser().resolve()
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    # -- derived locations -------------------------------------------------

    @property
    def cache(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "twotier"

    @property
    def local_online_server(self) -> OnlineServerName:
        """The local MongoDB-wire server the stack runs for the online store.

        ``stack.online_server`` when ``online_store`` is among the services, else the
        first of ``secantusdb`` / ``ferretdb`` named there explicitly.
        """
        services = self.stack.services
        if "online_store" not in services:
            for name in services:
                if name in ("secantusdb", "ferretdb"):
                    return name
        return self.stack.online_server

    @property
    def online_server_kind(self) -> MongoServerKind:
        """Which server the online store talks to (selects its declared capabilities)."""
        if self.online_store.server is not None:
            return self.online_store.server
        return "mongodb" if self.online_store.uri else self.local_online_server

    @property
    def online_store_uri(self) -> str:
        if self.online_store.uri:
            return self.online_store.uri
        server = self.secantusdb if self.local_online_server == "secantusdb" else self.ferretdb
        return f"mongodb://{server.host}:{server.port}/"

    @property
    def offline_store_dsn(self) -> str:
        return self.offline_store.dsn or f"chdb://{self.data_dir / 'offline'}"

    def project_features(self, project: str) -> ProjectFeatures:
        """The feature groups and models of ``project``.

        Raises:
            ConfigError: The project is not declared under ``projects``.
        """
        try:
            return self.projects[project]
        except KeyError:
            raise ConfigError(
                f"unknown project {project!r}: declared projects are {sorted(self.projects)} "
                "(add it under `projects:` in twotier.yaml)"
            ) from None

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME of the local Dagster instance (runs, schedules, event logs)."""
        return self.data_dir / "dagster" / "home"

    def to_env(self) -> dict[str, str]:
        """``TWOTIER_*`` variables that reproduce these settings in a child process.

        Sections become ``TWOTIER_<SECTION>__<FIELD>``; unset (``None``) values are left
        out so their defaults apply; lists and numbers are JSON. Environment variables win
        over the YAML file, so the child gets these exact values whatever file it reads.
        """
        env: dict[str, str] = {}
        dumped = self.model_dump(mode="json")
        dumped["cache_dir"] = str(self.cache)
        for field in type(self).model_fields:  # secrets dump masked; children need them
            section = getattr(self, field)
            if isinstance(section, BaseModel):
                for sub in type(section).model_fields:
                    value = getattr(section, sub)
                    if isinstance(value, SecretStr):
                        dumped[field][sub] = value.get_secret_value()
        for field, value in dumped.items():
            prefix = f"TWOTIER_{field.upper()}"
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    if sub_value is not None:
                        env[f"{prefix}__{sub.upper()}"] = _env_value(sub_value)
            elif value is not None:
                env[prefix] = _env_value(value)
        return env


def _env_value(value: Any) -> str:
    """One settings value as pydantic-settings parses it back from the environment."""
    return value if isinstance(value, str) else json.dumps(value)


_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_data", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The parsed YAML file, below environment variables in precedence."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"environment variable ${{{name}}} is not set (use ${{{name}:-default}})"
            )

        return _ENV_VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def env_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """The environment variable of a field path: ``("kafka", "port")`` ->
    ``TWOTIER_KAFKA__PORT``."""
    return "TWOTIER_" + "__".join(str(p).upper() for p in loc)


def _from_env(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """The set ``TWOTIER_*`` variable that gave the value at ``loc``, if one did."""
    for end in range(len(loc), 0, -1):
        name = env_name(loc[:end])
        if name in os.environ:
            return name
    return None


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:  # a check across fields: its message starts with the field it names
        head = re.match(r"^([a-z_]+): ", message)
        if head and env_name([head.group(1)]) in os.environ:
            message = f"{env_name([head.group(1)])} ({message}"
            message = message.replace(": ", "): ", 1)
        return message
    field = ".".join(str(p) for p in loc)
    variable = _from_env(loc)
    if variable is None:  # a check of a section: the variables set under it
        under = sorted(n for n in os.environ if n.startswith(env_name(loc) + "__"))
        variable = ", ".join(under) or None
    if variable is not None:
        field = f"{variable} ({field})"
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    ctx = error.get("ctx") or {}
    if "expected" in ctx and str(ctx["expected"]) not in message:
        message += f" (allowed: {ctx['expected']})"
    given = error.get("input")
    return f"{field}: {message}" + ("" if isinstance(given, dict) else f" (got {given!r})")


def _resolve_path(path: str | Path | None) -> Path | None:
    if path is not None:
        return Path(path)
    if os.environ.get(CONFIG_FILE_ENV):
        return Path(os.environ[CONFIG_FILE_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from a YAML file, ``TWOTIER_*`` variables and overrides.

    Args:
        path: The YAML file. Defaults to ``$TWOTIER_CONFIG`` or ``./twotier.yaml`` if present.
        **overrides: Values that win over the file and the environment.

    Returns:
        The validated settings.

    Raises:
        ConfigError: The file is missing, is not YAML, or a value is invalid. The message
            names the file, the field and what is allowed.
    """
    file = _resolve_path(path)
    data: dict[str, Any] = {}
    source = "environment"
    if file is not None:
        source = str(file)
        if not file.exists():
            raise ConfigError(f"{file}: config file not found (set {CONFIG_FILE_ENV} or create it)")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping, got {type(loaded).__name__}")
        try:
            data = _expand_env(loaded)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    token = _yaml_data.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"{source}: invalid configuration: {lines}") from exc
    except SettingsError as exc:
        # A complex value (a list, a mapping) in a variable that is not JSON.
        match = re.search(r'field "([^"]+)"', str(exc))
        prefix = env_name([match.group(1)]) if match else "TWOTIER_"
        names = sorted(n for n in os.environ if n.startswith(prefix))
        raise ConfigError(
            f"environment: {', '.join(names) or prefix}: cannot be read ({exc}); lists and "
            'mappings are given as JSON, e.g. \'["a", "b"]\''
        ) from exc
    finally:
        _yaml_data.reset(token)
