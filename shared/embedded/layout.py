"""Where an embedded cluster keeps its things under ``$TUSK_HOME``, and its state file.

$TUSK_HOME/config.toml          endpoints for the CLI and services (written by ``tusk up``)
$TUSK_HOME/postgres/            PostgreSQL data directory (kept across up/down)
$TUSK_HOME/nats/                JetStream store
$TUSK_HOME/objects/             local object store
$TUSK_HOME/logs/<component>.log
$TUSK_HOME/run/state.json       what runs where (written by the supervisor)
$TUSK_HOME/run/supervisor.lock  held by the running supervisor
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def make_dirs(self) -> None:
        for path in (self.home, self.nats_dir, self.objects, self.logs, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)


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
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    os.replace(tmp, layout.state_file)


def read_state(layout: Layout) -> ClusterState | None:
    """The last state the supervisor wrote, or None if there is none (or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return ClusterState.from_json(json.loads(layout.state_file.read_text()))
    return None
