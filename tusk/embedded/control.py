"""``tusk up``, ``tusk down``, ``tusk status``: start, stop and inspect the embedded cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.platform.config import tusk_home
from shared.platform.errors import FailedPrecondition, Unavailable
from tusk.embedded.components import PACKAGE_ROOT, SERVICES, ServiceSpec, component_ports
from tusk.embedded.layout import (
    DOWN,
    PHASE_DEGRADED,
    PHASE_FAILED,
    PHASE_READY,
    PHASE_STOPPED,
    UP,
    ClusterState,
    ComponentStatus,
    Layout,
    open_private,
    read_state,
)
from tusk.embedded.ports import check_port_requests
from tusk.embedded.supervisor import STOP_TIMEOUT, acquire_lock, run_supervisor

READY_TIMEOUT = 120.0
# The supervisor stops the services, then NATS, then PostgreSQL, each given STOP_TIMEOUT
# before SIGKILL: ``tusk down`` waits for all three with room to spare for a loaded machine
# (it gave up at 60 s while the supervisor was still within its own bounds).
DOWN_TIMEOUT = 3 * STOP_TIMEOUT + 45.0
# How long processes of the cluster left after its supervisor have to exit after SIGTERM.
STRAY_GRACE = 5.0


@dataclass
class ClusterStatus:
    """What ``tusk status`` reports: whether the cluster runs and each component's state."""

    home: str
    running: bool
    phase: str
    components: list[ComponentStatus]
    config_file: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "running": self.running,
            "phase": self.phase,
            "config_file": self.config_file,
            "error": self.error,
            "components": [c.to_json() for c in self.components],
        }

    def to_text(self) -> str:
        """A table for people: one line per component."""
        head = f"Tusk in {self.home}: {self.phase if self.running else 'not running'}"
        lines = [head]
        for c in self.components:
            pid = str(c.pid) if c.pid else "-"
            restarts = f"  (restarted {c.restarts}x)" if c.restarts else ""
            lines.append(f"  {c.name:<10} {c.state:<10} pid {pid:<8} {c.address or '-'}{restarts}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _layout(home: Path | None) -> Layout:
    return Layout((home or tusk_home()).expanduser().resolve())


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _cwd(pid: int) -> Path:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return Path("/nonexistent")


def _is_running(layout: Layout) -> bool:
    """True if a supervisor holds this home's lock."""
    lock = acquire_lock(layout)
    if lock is None:
        return True
    lock.close()
    return False


def status(home: Path | None = None) -> ClusterStatus:
    """The state of the embedded cluster under ``home`` (default ``$TUSK_HOME``)."""
    layout = _layout(home)
    running = layout.run_dir.exists() and _is_running(layout)
    state = read_state(layout) or ClusterState(home=str(layout.home))
    components = state.components
    if not running:
        components = [
            ComponentStatus(c.name, DOWN, None, c.address, c.restarts, c.log) for c in components
        ]
    else:
        for c in components:
            if c.pid and not _alive(c.pid):
                c.state, c.pid = DOWN, None
    phase = state.phase if running else PHASE_STOPPED
    if phase == PHASE_READY and any(c.state != UP for c in components):
        phase = PHASE_DEGRADED
    return ClusterStatus(
        home=str(layout.home),
        running=running,
        phase=phase,
        components=components,
        config_file=str(layout.config_file),
        error=state.error,
    )


def up(
    home: Path | None = None,
    *,
    detach: bool = False,
    services: Sequence[ServiceSpec] | None = None,
    echo: Callable[[str], None] = print,
    ports: Mapping[str, int] | None = None,
    any_ports: bool = False,
) -> None:
    """Start the cluster; in the foreground until Ctrl-C, or in the background with ``detach``.

    ``ports`` (component → port, 0 for any free one) and ``any_ports`` (every other
    component on a free port the OS picks, never a default): see ``tusk.embedded.ports``.
    """
    layout = _layout(home)
    layout.make_dirs()
    if _is_running(layout):
        state = read_state(layout)
        pid = state.supervisor_pid if state else None
        echo(f"Tusk is already running in {layout.home} (supervisor pid {pid}); see `tusk status`")
        return
    chosen = SERVICES if services is None else tuple(services)
    requested = dict(ports or {})
    # Refused here, before anything starts, as one line.
    check_port_requests(component_ports(chosen), requested)
    if not detach:
        if not run_supervisor(layout, chosen, echo, requested, any_ports):
            raise FailedPrecondition(f"Tusk failed to start; see {layout.logs}")
        return
    _start_detached(layout, _supervisor_argv(layout, chosen, requested, any_ports), echo)


def _supervisor_argv(
    layout: Layout, services: Sequence[ServiceSpec], ports: Mapping[str, int], any_ports: bool
) -> list[str]:
    argv = [sys.executable, "-m", "tusk.embedded.supervisor", "--home", str(layout.home)]
    if not services:
        argv.append("--no-services")
    elif tuple(services) != SERVICES:
        argv += [
            arg for s in services for arg in ("--service", f"{s.name}={s.module}:{s.default_port}")
        ]
    argv += [arg for name, port in ports.items() for arg in ("--port", f"{name}={port}")]
    if any_ports:
        argv.append("--any-ports")
    return argv


def _start_detached(layout: Layout, argv: list[str], echo: Callable[[str], None]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    log_path = layout.log("supervisor")
    started = time.time()
    with open_private(log_path) as log, open(os.devnull, "rb") as devnull:
        # A new session: the supervisor outlives this terminal and is not hit by its Ctrl-C.
        process = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=layout.home,
            start_new_session=True,
        )
    echo(f"starting Tusk in {layout.home} (supervisor pid {process.pid})")
    shown: set[str] = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        state = read_state(layout)
        fresh = state is not None and state.supervisor_pid == process.pid
        if fresh and state is not None:
            for c in state.components:
                if c.state == UP and c.name not in shown:
                    shown.add(c.name)
                    echo(f"{c.name:<10} up    {c.address}  (pid {c.pid})")
            if state.phase == PHASE_READY:
                echo(f"Tusk is up. Config: {layout.config_file}  Logs: {layout.logs}")
                return
            if state.phase == PHASE_FAILED:
                process.wait()
                raise FailedPrecondition(f"Tusk failed to start: {state.error}")
        code = process.poll()
        if code is not None:
            raise FailedPrecondition(
                f"the Tusk supervisor exited with code {code}; see {log_path}: {_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGTERM)
            raise Unavailable(
                f"Tusk did not become ready in {READY_TIMEOUT:.0f} s "
                f"(started {time.ctime(started)}); see {layout.logs}"
            )
        time.sleep(0.05)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def down(home: Path | None = None, *, echo: Callable[[str], None] = print) -> None:
    """Stop the cluster: services, then NATS, then PostgreSQL. Data stays in ``home``."""
    layout = _layout(home)
    state = read_state(layout)
    running = layout.run_dir.exists() and _is_running(layout)
    if running and state is not None and state.supervisor_pid and _alive(state.supervisor_pid):
        pid = state.supervisor_pid
        if "tusk.embedded" not in _cmdline(pid) and pid != os.getpid():
            raise FailedPrecondition(f"pid {pid} in {layout.state_file} is not a Tusk supervisor")
        echo(f"stopping Tusk in {layout.home} (supervisor pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while _alive(pid) or _is_running(layout):
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"the Tusk supervisor (pid {pid}) did not stop in {DOWN_TIMEOUT} s"
                )
            time.sleep(0.05)
    else:
        echo(f"Tusk is not running in {layout.home}")
    _reap_leftovers(layout, state, echo)
    _stop_strays(layout, echo)
    if running:
        echo("Tusk stopped; data kept in " + str(layout.home))


def _reap_leftovers(
    layout: Layout, state: ClusterState | None, echo: Callable[[str], None]
) -> None:
    """Terminate components a dead supervisor left behind (only processes that are ours)."""
    if state is None:
        return
    order = sorted(state.components, key=lambda c: c.name in ("nats", "postgres"))
    order.sort(key=lambda c: c.name == "postgres")
    for c in order:
        if not c.pid or not _alive(c.pid):
            continue
        command = _cmdline(c.pid)
        # PostgreSQL run as another user names its data directory "/proc/self/cwd".
        ours = (
            str(layout.home) in command
            or (c.log and "-m services." in command)
            or _cwd(c.pid).is_relative_to(layout.home)
        )
        if not ours:
            continue
        echo(f"stopping leftover {c.name} (pid {c.pid})")
        os.kill(c.pid, signal.SIGINT if c.name == "postgres" else signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(c.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(c.pid):
            os.kill(c.pid, signal.SIGKILL)


def _cluster_processes(layout: Layout) -> list[int]:
    """Tusk's own processes of this cluster still running: services and the workers they
    started (``python -m services.…``, whose environment names this home).

    Workers run in sessions of their own and outlive a scheduler that was killed for a
    short while, so neither the supervisor's children nor process groups find them all.
    """
    marker = f"TUSK_HOME={layout.home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        pid = int(entry.name)
        if marker in environ and "-m services." in _cmdline(pid) and _alive(pid):
            found.append(pid)
    return found


def _stop_strays(layout: Layout, echo: Callable[[str], None]) -> None:
    """SIGTERM every process of the cluster still running, SIGKILL those left after
    ``STRAY_GRACE``; return once all are gone, so nothing of the cluster outlives ``down``."""
    strays = _cluster_processes(layout)
    if not strays:
        return
    echo(f"stopping {len(strays)} leftover process(es) of the cluster: {strays}")
    for sig, grace in ((signal.SIGTERM, STRAY_GRACE), (signal.SIGKILL, STRAY_GRACE)):
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            strays = [pid for pid in strays if _alive(pid)]
            if not strays:
                return
            time.sleep(0.05)
    raise Unavailable(f"processes of the cluster did not stop: {strays}")
