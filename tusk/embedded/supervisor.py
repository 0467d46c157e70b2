"""The supervisor of an embedded cluster: starts components in order, restarts crashed ones, stops all.

Run in the foreground by ``tusk up`` or in the background (new session) by
``tusk up --detach`` as ``python -m tusk.embedded.supervisor --home DIR``. It holds
``run/supervisor.lock`` while alive and records what runs where in ``run/state.json``.
SIGTERM or SIGINT stops the cluster: services first, then NATS, then PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from shared.platform.config import Config, dump_config_toml, load_config
from shared.platform.db import ensure_database
from shared.platform.errors import FailedPrecondition, TuskError
from tusk.contexts import write_local_context
from tusk.embedded.components import (
    SERVICES,
    TUSK_DATABASE,
    Launch,
    ServiceSpec,
    component_ports,
    init_postgres,
    nats_launch,
    postgres_admin_url,
    postgres_launch,
    run_as,
    secure_postgres,
    service_launch,
)
from tusk.embedded.layout import (
    DOWN,
    FAILED,
    PHASE_FAILED,
    PHASE_READY,
    PHASE_STARTING,
    PHASE_STOPPED,
    PHASE_STOPPING,
    PRIVATE_DIR,
    PRIVATE_FILE,
    PRIVATE_UMASK,
    RESTARTING,
    STARTING,
    STOPPING,
    UNREADY,
    UP,
    ClusterState,
    ComponentStatus,
    Layout,
    open_private,
    read_state,
    write_private,
    write_state,
)
from tusk.embedded.ports import parse_port_request, plan_ports

log = logging.getLogger("tusk.embedded")

RESTART_MIN_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
# A component that stayed up this long is healthy again: its restart delay starts over.
STABLE_AFTER = 60.0
# Before a component was ever ready, give up after this many failed starts.
MAX_FAILED_STARTS = 3
STOP_TIMEOUT = 15.0
# Settings a user may put in $TUSK_HOME/config.toml that ``tusk up`` keeps when rewriting it.
KEPT_SETTINGS = (
    "allowed_hosts", "allowed_origins",
    "local_images", "image_cache_dir", "image_cache_bytes", "registry_auth_file",
)  # fmt: skip
# How often a running component's readiness is probed, and how many probes in a row must
# fail (a slow answer on a busy machine is not an outage) before it shows as ``unready``.
PROBE_INTERVAL = 1.0
UNREADY_AFTER = 2

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    """preexec_fn: the kernel sends ``sig`` to the child if the supervisor dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class Child:
    """One supervised component: its process, state and restart loop."""

    def __init__(self, launch: Launch, layout: Layout, on_change: Callable[[Child], None]) -> None:
        self.launch = launch
        self.layout = layout
        self.status = ComponentStatus(
            name=launch.name, address=launch.address, log=str(layout.log(launch.name))
        )
        self.failure: str | None = None
        self.ever_up = False
        self._on_change = on_change
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()

    @property
    def name(self) -> str:
        return self.launch.name

    def _set(self, state: str, pid: int | None = None) -> None:
        self.status.state = state
        self.status.pid = pid
        self._on_change(self)

    async def run(self) -> None:
        """Start the component and keep it running until ``stop()``."""
        try:
            await self._supervise()
        finally:
            # Cancelled (the supervisor is failing): never leave the process behind.
            if self._process is not None and self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()

    async def _supervise(self) -> None:
        delay = RESTART_MIN_DELAY
        failed_starts = 0
        while not self._stopping.is_set():
            process = await self._spawn()
            self._set(STARTING if not self.ever_up else RESTARTING, process.pid)
            if await self._wait_ready(process):
                self.ever_up = True
                up_since = time.monotonic()
                self._set(UP, process.pid)
                code = await self._watch(process)
                if self._stopping.is_set():
                    break
                if time.monotonic() - up_since > STABLE_AFTER:
                    delay = RESTART_MIN_DELAY
                log.warning("%s exited with code %s; restarting in %.1f s", self.name, code, delay)
            else:
                await self._kill(process)
                if self._stopping.is_set():
                    break
                if not self.ever_up:
                    failed_starts += 1
                    if failed_starts >= MAX_FAILED_STARTS:
                        self.failure = (
                            f"{self.name} did not become ready after {failed_starts} tries;"
                            f" see {self.status.log}"
                        )
                        self._set(FAILED)
                        return
                log.warning("%s did not become ready; retrying in %.1f s", self.name, delay)
            self.status.restarts += 1
            self._set(RESTARTING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)
        self._set(DOWN)

    async def _watch(self, process: asyncio.subprocess.Process) -> int:
        """Wait for the process to exit, probing its readiness meanwhile: a service whose
        PostgreSQL or NATS is away still runs, but must not show as up."""
        exited = asyncio.ensure_future(process.wait())
        failed = 0
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=PROBE_INTERVAL)
                if done:
                    return exited.result()
                failed = 0 if await self.launch.ready() else failed + 1
                if self._stopping.is_set() or process.returncode is not None:
                    continue
                state = UNREADY if failed >= UNREADY_AFTER else UP if failed == 0 else None
                if state is not None and state != self.status.state:
                    self._set(state, process.pid)
        finally:
            exited.cancel()

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
        # The child reads config.toml; inherited TUSK_* variables must not override it.
        env.update(self.launch.env)
        uid, gid, groups = run_as(self.launch.user)
        with open_private(self.layout.log(self.name)) as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self.launch.cwd or self.layout.home,
                preexec_fn=_die_with_parent(self.launch.stop_signal),
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        return self._process

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.launch.ready_timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if process.returncode is not None:
                return False
            if await self.launch.ready():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.1)
        return False

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop the process (its stop signal, then SIGKILL after a timeout) and the restart loop."""
        self._stopping.set()
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._set(STOPPING, process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self.launch.stop_signal)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", self.name, STOP_TIMEOUT)
            await self._kill(process)


class Supervisor:
    """Runs one embedded cluster under ``layout`` until told to stop."""

    def __init__(
        self,
        layout: Layout,
        services: Sequence[ServiceSpec] = SERVICES,
        progress: Callable[[str], None] = print,
        ports: Mapping[str, int] | None = None,
        any_ports: bool = False,
    ) -> None:
        self.layout = layout
        self.services = tuple(services)
        self.progress = progress
        self.requested_ports = dict(ports or {})
        self.any_ports = any_ports
        self.state = ClusterState(home=str(layout.home), supervisor_pid=os.getpid())
        self.children: list[Child] = []
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def _changed(self, child: Child) -> None:
        write_state(self.layout, self.state)
        if child.status.state == UP:
            pid = child.status.pid
            self.progress(f"{child.name:<10} up    {child.launch.address}  (pid {pid})")
        elif child.status.state == UNREADY:
            self.progress(f"{child.name:<10} not ready (its readiness probe fails)")
        elif child.status.state == FAILED:
            self.progress(f"{child.name:<10} failed: {child.failure}")

    def _set_phase(self, phase: str, error: str | None = None) -> None:
        self.state.phase = phase
        self.state.error = error
        write_state(self.layout, self.state)

    def _plan(self, password: str) -> tuple[list[Launch], list[Launch], Config]:
        """Choose ports (``tusk.embedded.ports``) and the config."""
        ports = plan_ports(
            component_ports(self.services),
            self.requested_ports,
            _previous_ports(self.layout),
            any_ports=self.any_ports,
        )
        cluster_id = self.layout.cluster_id()
        infra = [
            postgres_launch(self.layout, ports["postgres"], password),
            nats_launch(self.layout, ports["nats"]),
        ]
        services = [
            service_launch(self.layout, spec, ports[spec.name], cluster_id)
            for spec in self.services
        ]
        urls = {
            f"{launch.name}_url": launch.address
            for launch in services
            if f"{launch.name}_url" in Config.__dataclass_fields__
        }
        config = Config(
            database_url=postgres_admin_url(infra[0].port, password, TUSK_DATABASE),
            nats_url=infra[1].address,
            nats_prefix="tusk",
            object_store=f"file://{self.layout.objects}",
            cluster_id=cluster_id,
            **_kept_settings(self.layout),
        ).replace(**urls)
        return infra, services, config

    async def run(self) -> bool:
        """Bring the cluster up, supervise it until stopped; False if it failed to start."""
        self.layout.make_dirs()
        password = self.layout.postgres_password()
        infra, services, config = self._plan(password)
        # 0600: it holds the database password (secrets/postgres-password is the source).
        write_private(self.layout.config_file, dump_config_toml(config))
        write_local_context(self.layout.home, config)
        self.children = [Child(launch, self.layout, self._changed) for launch in infra + services]
        self.state.components = [child.status for child in self.children]
        self._set_phase(PHASE_STARTING)
        self.progress(f"starting Tusk in {self.layout.home}")
        ok = False
        async with asyncio.TaskGroup() as group:
            try:
                await asyncio.to_thread(init_postgres, self.layout)
                await asyncio.to_thread(secure_postgres, self.layout, password)
                first, rest = self.children[: len(infra)], self.children[len(infra) :]
                for child in first:
                    group.create_task(child.run(), name=f"supervise-{child.name}")
                if await self._wait_up(first):
                    admin_url = postgres_admin_url(infra[0].port, password)
                    await ensure_database(admin_url, TUSK_DATABASE)
                    for child in rest:
                        group.create_task(child.run(), name=f"supervise-{child.name}")
                    ok = await self._wait_up(rest)
                if ok:
                    self._set_phase(PHASE_READY)
                    self.progress(f"Tusk is up; config in {self.layout.config_file}")
                    await self._stop.wait()
            except TuskError as exc:
                self.state.error = exc.message
            finally:
                self._set_phase(PHASE_STOPPING, self.state.error or self._failure())
                await self._stop_all()
        self._set_phase(PHASE_STOPPED if ok else PHASE_FAILED, self.state.error)
        self.progress("Tusk stopped" if ok else f"Tusk failed to start: {self.state.error}")
        return ok

    def _failure(self) -> str | None:
        return next((c.failure for c in self.children if c.failure), None)

    async def _wait_up(self, children: Sequence[Child]) -> bool:
        while not self._stop.is_set():
            if all(child.ever_up for child in children):
                return True
            if any(child.failure for child in children):
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)
        return False

    async def _stop_all(self) -> None:
        """Services first (they use the rest), then NATS, then PostgreSQL."""
        services = [c for c in self.children if c.name not in ("postgres", "nats")]
        await asyncio.gather(*(child.stop() for child in services))
        for name in ("nats", "postgres"):
            for child in self.children:
                if child.name == name:
                    await child.stop()


def _previous_ports(layout: Layout) -> dict[str, int]:
    """Ports of the last run, so a cluster keeps its addresses across up/down when it can."""
    state = read_state(layout)
    ports: dict[str, int] = {}
    if state is not None:
        for component in state.components:
            address = component.address or ""
            tail = address.rsplit(":", 1)[-1].split("/")[0]
            if tail.isdigit():
                ports[component.name] = int(tail)
    if not ports and layout.config_file.exists():
        with contextlib.suppress(TuskError, ValueError):
            config = load_config(layout.config_file, environ={})
            ports["pfs"] = int(config.pfs_url.rsplit(":", 1)[-1])
    return ports


def _kept_settings(layout: Layout) -> dict[str, Any]:
    """What the user set in config.toml that ``tusk up`` keeps when it rewrites the file."""
    if not layout.config_file.exists():
        return {}
    with contextlib.suppress(TuskError, ValueError, OSError):
        previous = load_config(layout.config_file, environ={})
        return {name: getattr(previous, name) for name in KEPT_SETTINGS}
    return {}


def acquire_lock(layout: Layout) -> IO[str] | None:
    """Take the supervisor lock; None if another supervisor of this home holds it."""
    layout.run_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    handle = os.fdopen(fd, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def run_supervisor(
    layout: Layout,
    services: Sequence[ServiceSpec] = SERVICES,
    progress: Callable[[str], None] = print,
    ports: Mapping[str, int] | None = None,
    any_ports: bool = False,
) -> bool:
    """Run a supervisor in this process until SIGTERM/SIGINT; False if the cluster failed.

    ``ports`` (component → port, 0 for any) and ``any_ports``: see ``tusk.embedded.ports``.
    """
    lock = acquire_lock(layout)
    if lock is None:
        raise FailedPrecondition(f"Tusk is already running in {layout.home}")
    # Whatever the cluster writes under $TUSK_HOME (logs, JetStream, objects) is private.
    os.umask(PRIVATE_UMASK)
    try:
        supervisor = Supervisor(layout, services, progress, ports, any_ports)

        async def main() -> bool:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, supervisor.request_stop)
            return await supervisor.run()

        return asyncio.run(main())
    finally:
        lock.close()


def parse_service(text: str) -> ServiceSpec:
    """``name=module:port`` → ServiceSpec (for tests and for running extra services)."""
    name, _, rest = text.partition("=")
    module, _, port = rest.partition(":")
    if not name or not module or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected name=module:port, got {text!r}")
    return ServiceSpec(name, module, int(port))


def _port_request(text: str) -> tuple[str, int]:
    try:
        return parse_port_request(text)
    except TuskError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tusk.embedded.supervisor")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument(
        "--service",
        action="append",
        type=parse_service,
        help="run this service instead of the default table (repeatable)",
    )
    parser.add_argument("--no-services", action="store_true", help="only PostgreSQL and NATS")
    parser.add_argument(
        "--port",
        action="append",
        default=[],
        type=_port_request,
        help="NAME=PORT: the port of one component, 0 for any free one (repeatable)",
    )
    parser.add_argument(
        "--any-ports", action="store_true", help="free ports the OS picks, never the defaults"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    services: Sequence[ServiceSpec] = SERVICES
    if args.no_services:
        services = ()
    elif args.service:
        services = args.service

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        ok = run_supervisor(Layout(args.home), services, progress, dict(args.port), args.any_ports)
        return 0 if ok else 1
    except TuskError as exc:
        print(exc.message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
