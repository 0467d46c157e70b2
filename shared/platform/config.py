"""Configuration: one typed object, read from a TOML file and ``TUSK_*`` environment variables.

Precedence: environment variable > TOML file > default. The TOML file is
``$TUSK_CONFIG`` if set, else ``$TUSK_HOME/config.toml`` (``tusk up`` writes it).
Pointing Tusk at external PostgreSQL, NATS or S3 is only a matter of these values.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.platform.errors import InvalidArgument

# The response header in which a service names its cluster (``Config.cluster_id``).
CLUSTER_HEADER = "Tusk-Cluster"


def tusk_home() -> Path:
    return Path(os.environ.get("TUSK_HOME", str(Path.home() / ".tusk")))


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    bucket: str = "tusk"
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """What a datum worker process reads (``[worker]``; env ``TUSK_WORKER_*``)."""

    # Datums one worker runs at once, each in its own sandbox.
    concurrency: int = 2
    # Where a datum runs: "bwrap" (a bubblewrap sandbox on this machine) or "pod" (the
    # user container of the worker's Kubernetes pod, set by the Kubernetes backend).
    datum_sandbox: str = "bwrap"
    # Set by the local backend for a pipeline with an image (docs/images.md): the image's
    # manifest digest and the cache holding it; empty: datums see this machine's /usr.
    image: str = ""
    image_cache: str = ""


@dataclass(frozen=True)
class MountConfig:
    """How mountd mounts (``[mount]``; env ``TUSK_MOUNT_*``)."""

    # Where the FUSE tree goes and where rw mounts buffer writes (empty: under $TUSK_HOME).
    root: str = ""
    scratch: str = ""
    # Branch mounts follow branch.moved events; this re-check covers a missed event (0: off).
    refresh_s: float = 30.0
    cache_mb: int = 256
    block_kb: int = 1024
    list_page: int = 1000


@dataclass(frozen=True)
class Config:
    """Everything a Tusk process needs to find its peers."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/tusk"
    nats_url: str = "nats://127.0.0.1:4222"
    # Subjects are "<prefix>.pfs.<type>...", the stream "<PREFIX>_EVENTS"; tests use fresh prefixes.
    nats_prefix: str = "tusk"
    # "file:///abs/dir" for the local-directory store, "s3" for S3 (see ``s3``).
    object_store: str = "file:///tmp/tusk-objects"
    s3: S3Config = field(default_factory=S3Config)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    mount: MountConfig = field(default_factory=MountConfig)
    pfs_url: str = "http://127.0.0.1:7651"
    pps_url: str = "http://127.0.0.1:7652"
    mountd_url: str = "http://127.0.0.1:7654"
    # The S3 gateway (docs/s3.md), and the domains under which it also takes
    # virtual-hosted-style requests (Host: BUCKET.<domain>); "localhost" always counts.
    s3gateway_url: str = "http://127.0.0.1:7655"
    s3gateway_domains: tuple[str, ...] = ()
    # The web console (docs/console.md); ``tusk up`` records where it serves.
    console_url: str = "http://127.0.0.1:7656"
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    # Largest single file a put accepts (bytes); protects against absurd uploads.
    max_file_bytes: int = 1 << 40
    scheduler_url: str = "http://127.0.0.1:7653"
    # Where datum workers run: "local" (sandboxed subprocesses) or "kubernetes".
    worker_backend: str = "local"
    # Seconds a task may go without a worker's heartbeat before it is redelivered.
    task_ack_wait: int = 30
    # PPS's key for sealing secrets' values in the database (made on first use, mode 0600);
    # empty means $TUSK_HOME/pps-secrets.key. PPS replicas must share one.
    secrets_key_file: str = ""
    # Host names a service answers to besides IP literals and ``localhost`` (DNS rebinding
    # guard): exact names, ``.example.com`` for a domain and its subdomains, ``*`` for any.
    allowed_hosts: tuple[str, ...] = ()
    # Browser origins (``scheme://host[:port]``) besides a service's own that may send it
    # state-changing requests, e.g. a console served from another address.
    allowed_origins: tuple[str, ...] = ()
    # Written by ``tusk up``: every service of the cluster reports it (``Tusk-Cluster``
    # header) and clients configured with it refuse a service that reports another.
    cluster_id: str = ""
    # Local workers and ``transform.image`` (docs/images.md): "pull" runs each datum in its
    # pipeline's image, pulled from its registry; "host" runs it on this machine's /usr.
    local_images: str = "pull"
    # The image cache (empty: $TUSK_HOME/images) and its size bound in bytes (LRU eviction).
    image_cache_dir: str = ""
    image_cache_bytes: int = 20 << 30
    # Registry logins in Docker's config.json format (empty: ~/.docker/config.json).
    registry_auth_file: str = ""
    # Garbage collection (docs/lifecycle.md): objects younger than the grace period are
    # never deleted; PFS collects every interval (0: only on ``tusk garbage-collect``);
    # the other owners asked what they reference: "scheduler" and "s3gateway" name those
    # services' URLs, anything else is a base URL.
    gc_grace_s: float = 3600.0
    gc_interval_s: float = 86400.0
    gc_reference_owners: tuple[str, ...] = ("scheduler", "s3gateway")
    # The most live-chunk marks a collection holds in memory (~100 bytes each) before it
    # spills them, sorted, to runs in gc_spill_dir (empty: the system's temp directory).
    gc_mark_chunks_in_memory: int = 4_000_000
    gc_spill_dir: str = ""

    @property
    def stream_name(self) -> str:
        return f"{self.nats_prefix.upper()}_EVENTS"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_ENV_FIELDS = {
    "TUSK_DATABASE_URL": "database_url",
    "TUSK_NATS_URL": "nats_url",
    "TUSK_NATS_PREFIX": "nats_prefix",
    "TUSK_OBJECT_STORE": "object_store",
    "TUSK_PFS_URL": "pfs_url",
    "TUSK_PPS_URL": "pps_url",
    "TUSK_MOUNTD_URL": "mountd_url",
    "TUSK_S3GATEWAY_URL": "s3gateway_url",
    "TUSK_S3GATEWAY_DOMAINS": "s3gateway_domains",
    "TUSK_CONSOLE_URL": "console_url",
    "TUSK_LISTEN_HOST": "listen_host",
    "TUSK_LISTEN_PORT": "listen_port",
    "TUSK_MAX_FILE_BYTES": "max_file_bytes",
    "TUSK_SCHEDULER_URL": "scheduler_url",
    "TUSK_WORKER_BACKEND": "worker_backend",
    "TUSK_TASK_ACK_WAIT": "task_ack_wait",
    "TUSK_SECRETS_KEY_FILE": "secrets_key_file",
    "TUSK_ALLOWED_HOSTS": "allowed_hosts",
    "TUSK_ALLOWED_ORIGINS": "allowed_origins",
    "TUSK_CLUSTER_ID": "cluster_id",
    "TUSK_LOCAL_IMAGES": "local_images",
    "TUSK_IMAGE_CACHE_DIR": "image_cache_dir",
    "TUSK_IMAGE_CACHE_BYTES": "image_cache_bytes",
    "TUSK_REGISTRY_AUTH_FILE": "registry_auth_file",
}
_S3_ENV_FIELDS = {
    "TUSK_S3_ENDPOINT_URL": "endpoint_url",
    "TUSK_S3_BUCKET": "bucket",
    "TUSK_S3_PREFIX": "prefix",
    "TUSK_S3_REGION": "region",
    "TUSK_S3_ACCESS_KEY": "access_key",
    "TUSK_S3_SECRET_KEY": "secret_key",
}


_WORKER_ENV_FIELDS = {
    "TUSK_WORKER_CONCURRENCY": "concurrency",
    # The Kubernetes backend's name for it, kept: worker pods of older manifests set it.
    "TUSK_DATUM_SANDBOX": "datum_sandbox",
    "TUSK_WORKER_IMAGE": "image",
    "TUSK_WORKER_IMAGE_CACHE": "image_cache",
}
_MOUNT_ENV_FIELDS = {
    "TUSK_MOUNT_ROOT": "root",
    "TUSK_MOUNT_SCRATCH": "scratch",
    "TUSK_MOUNT_REFRESH_S": "refresh_s",
    "TUSK_MOUNT_CACHE_MB": "cache_mb",
    "TUSK_MOUNT_BLOCK_KB": "block_kb",
    "TUSK_MOUNT_LIST_PAGE": "list_page",
}
# Tables of the TOML file and the environment variables of their fields.
_SECTIONS: dict[str, tuple[type[Any], dict[str, str]]] = {
    "s3": (S3Config, _S3_ENV_FIELDS),
    "worker": (WorkerConfig, _WORKER_ENV_FIELDS),
    "mount": (MountConfig, _MOUNT_ENV_FIELDS),
}


def config_file() -> Path:
    explicit = os.environ.get("TUSK_CONFIG")
    return Path(explicit) if explicit else tusk_home() / "config.toml"


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        # A TOML array, or a comma-separated environment variable.
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise InvalidArgument(f"config {name}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if isinstance(default, float) and not isinstance(value, int | float):
        try:
            return float(value)
        except ValueError:
            raise InvalidArgument(f"config {name}: expected a number, got {value!r}") from None
    if isinstance(default, int) and not isinstance(value, int):
        try:
            return int(value)
        except ValueError:
            raise InvalidArgument(f"config {name}: expected an integer, got {value!r}") from None
    return value


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if present) and the environment into a ``Config``."""
    env = os.environ if environ is None else environ
    path = path or config_file()
    values: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
        for name in _SECTIONS:
            tables[name].update(data.pop(name, {}) or {})
        known = {f.name for f in dataclasses.fields(Config)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"config file {path}: unknown keys {sorted(unknown)}")
        values.update(data)
    for var, name in _ENV_FIELDS.items():
        if var in env:
            values[name] = env[var]
    for section, (_cls, env_fields) in _SECTIONS.items():
        for var, name in env_fields.items():
            if var in env:
                tables[section][name] = env[var]
    defaults = Config()
    coerced = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    for section, (cls, _env_fields) in _SECTIONS.items():
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(tables[section]) - known
        if unknown:
            raise InvalidArgument(f"config [{section}]: unknown keys {sorted(unknown)}")
        default = cls()
        coerced[section] = cls(
            **{
                k: _coerce(f"{section}.{k}", v, getattr(default, k))
                for k, v in tables[section].items()
            }
        )
    return Config(**coerced)


def dump_config_toml(config: Config) -> str:
    """Render a config as TOML (str/int values, lists of str and the [s3] table)."""
    lines = []
    tables: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name in _SECTIONS:
            for sf in dataclasses.fields(value):
                sv = getattr(value, sf.name)
                if sv is not None:
                    tables[f.name].append(f"{sf.name} = {_toml_value(sv)}")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    text = "\n".join(lines) + "\n"
    for name, table in tables.items():
        if table:
            text += f"\n[{name}]\n" + "\n".join(table) + "\n"
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
