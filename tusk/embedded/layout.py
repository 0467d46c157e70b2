"""Where an embedded cluster keeps its things under ``$TUSK_HOME``, and its state file.

$TUSK_HOME/config.toml          endpoints for the CLI and services (written by ``tusk up``)
$TUSK_HOME/postgres/            PostgreSQL data directory (kept across up/down)
$TUSK_HOME/nats/                JetStream store
$TUSK_HOME/objects/             local object store
$TUSK_HOME/logs/<component>.log
$TUSK_HOME/run/state.json       what runs where (written by the supervisor)
$TUSK_HOME/run/supervisor.lock  held by the running supervisor
$TUSK_HOME/secrets/postgres-password  the embedded PostgreSQL's password (made at first start)
$TUSK_HOME/cluster-id           this cluster's id, which its services report (made at first start)

Everything under $TUSK_HOME is private to its owner: directories 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

# Modes of everything under $TUSK_HOME: only its owner may look (passwords, data, logs).
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PRIVATE_UMASK = 0o077

# Component states as shown by ``tusk status``; ``unready``: running, but its readiness
# probe fails (a service while PostgreSQL or NATS is away).
STARTING, UP, UNREADY, RESTARTING, STOPPING, DOWN, FAILED = (
    "starting",
    "up",
    "unready",
    "restarting",
    "stopping",
    "down",
    "failed",
)
# Phases of the cluster as a whole; ``degraded``: was ready, but a component is not up now.
PHASE_STARTING, PHASE_READY, PHASE_DEGRADED, PHASE_STOPPING, PHASE_STOPPED, PHASE_FAILED = (
    "starting",
    "ready",
    "degraded",
    "stopping",
    "stopped",
    "failed",
)


@dataclass(frozen=True)
class Layout:
    """The paths of one embedded cluster."""

    home: Path

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def pgdata(self) -> Path:
        return self.home / "postgres"

    @property
    def nats_dir(self) -> Path:
        return self.home / "nats"

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "supervisor.lock"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def postgres_password_file(self) -> Path:
        return self.secrets_dir / "postgres-password"

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster-id"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def make_dirs(self) -> None:
        """Create the directories, private to their owner (also those of an older home)."""
        for path in (
            self.home,
            self.nats_dir,
            self.objects,
            self.logs,
            self.run_dir,
            self.secrets_dir,
        ):
            path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            path.chmod(PRIVATE_DIR)

    def postgres_password(self) -> str:
        """The embedded PostgreSQL's password, made at first use."""
        return private_value(self.postgres_password_file, lambda: secrets.token_urlsafe(32))

    def cluster_id(self) -> str:
        """This cluster's id, made at first use and kept across ``tusk down``/``up``."""
        return private_value(self.cluster_id_file, lambda: uuid.uuid4().hex)


@dataclass
class ComponentStatus:
    """One component as ``tusk status`` shows it."""

    name: str
    state: str = DOWN
    pid: int | None = None
    address: str | None = None
    restarts: int = 0
    log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterState:
    """The supervisor's view of the cluster, persisted in ``run/state.json``."""

    home: str
    phase: str = PHASE_STOPPED
    supervisor_pid: int | None = None
    error: str | None = None
    components: list[ComponentStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "phase": self.phase,
            "supervisor_pid": self.supervisor_pid,
            "error": self.error,
            "components": [c.to_json() for c in self.components],
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ClusterState:
        return cls(
            home=str(body.get("home", "")),
            phase=str(body.get("phase", PHASE_STOPPED)),
            supervisor_pid=body.get("supervisor_pid"),
            error=body.get("error"),
            components=[ComponentStatus(**c) for c in body.get("components", [])],
        )

    def component(self, name: str) -> ComponentStatus | None:
        return next((c for c in self.components if c.name == name), None)


def write_state(layout: Layout, state: ClusterState) -> None:
    """Replace the state file atomically, so readers never see half of it."""
    write_private(layout.state_file, json.dumps(state.to_json(), indent=1))


def write_private(path: Path, text: str, uid: int | None = None, gid: int | None = None) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 (owned by ``uid:gid`` if given)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, PRIVATE_FILE)  # an older tmp file may have had another mode
    if uid is not None and gid is not None:
        os.chown(tmp, uid, gid)
    os.replace(tmp, path)


def open_private(path: Path) -> IO[bytes]:
    """``path`` opened for appending, created 0600 (logs)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE), "ab")


def private_value(path: Path, make: Callable[[], str]) -> str:
    """The one-line value kept in ``path`` (0600), made by ``make`` the first time."""
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            return value
    value = make()
    write_private(path, value + "\n")
    return value


def read_state(layout: Layout) -> ClusterState | None:
    """The last state the supervisor wrote, or None if there is none (or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return ClusterState.from_json(json.loads(layout.state_file.read_text()))
    return None
