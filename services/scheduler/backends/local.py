"""The local backend: ``parallelism`` worker processes per pipeline on this machine.

Each worker is ``python -m services.scheduler.worker <pipeline>``; a worker that
exits is started again at the next reconcile, and its unacked datum is
redelivered by JetStream to a live one. A pipeline with ``transform.image`` gets its
workers once its image is pulled into the cache (``image_provider``), and they run their
datums in it; a pull that fails is the pipeline's problem (``status``), one line naming
the image and the registry's reason. Workers end with the scheduler that started
them, even one killed by SIGKILL (the kernel sends them SIGTERM): a restarted
scheduler starts its own, and none is left running with no owner. Without
bubblewrap the backend refuses to start, with the reason in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.scheduler.backends import WorkerSet
from services.scheduler.backends.image_provider import (
    HOST,
    IMAGE_CACHE_ENV,
    WORKER_IMAGE_ENV,
    ImageProvider,
    ImageSettings,
)
from services.scheduler.sandbox import bwrap_available
from shared.platform.errors import FailedPrecondition

log = logging.getLogger("tusk.scheduler.local")

_PR_SET_PDEATHSIG = 1
# How long a worker may take to exit after SIGTERM (it needs ~1 s) before SIGKILL.
STOP_GRACE_S = 5.0
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> None:
    """preexec_fn of a worker: SIGTERM from the kernel when ``parent`` (the scheduler) dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # it died before the line above: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Pipeline:
    version: int
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    restarts: int = 0


class LocalBackend:
    def __init__(
        self,
        config_path: Path | None,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        images: ImageSettings | None = None,
    ) -> None:
        reason = bwrap_available()
        if reason is not None:
            raise FailedPrecondition(f"local workers need bubblewrap: {reason}")
        self._config_path = config_path
        self._log_dir = log_dir
        self._env = dict(env or {})
        self._pipelines: dict[str, _Pipeline] = {}
        # Without settings, images are not used (datums run on the host's /usr).
        self._images = ImageProvider(images or ImageSettings(HOST, log_dir / "images"))
        log_dir.mkdir(parents=True, exist_ok=True)

    async def reconcile(self, desired: Mapping[str, WorkerSet]) -> None:
        for name in list(self._pipelines):
            wanted = desired.get(name)
            if wanted is None or wanted.version != self._pipelines[name].version:
                await self._stop(name)
        self._images.forget((name, wanted.version) for name, wanted in desired.items())
        for name, wanted in desired.items():
            state = self._pipelines.setdefault(name, _Pipeline(wanted.version))
            image = wanted.spec.transform.image
            note = self._images.host_note(name, wanted.version, image)
            if note is not None:
                log.info("%s", note)
                self._note(name, note)
            digest = self._images.image_for(
                name, wanted.version, image, wanted.spec.transform.image_pull_secrets
            )
            if digest is False:
                continue  # pulling, or the pull failed (status() says why)
            alive = []
            for proc in state.processes:
                if proc.returncode is None:
                    alive.append(proc)
                else:
                    state.restarts += 1
                    log.warning(
                        "worker %d of %s exited with %s; restarting",
                        proc.pid,
                        name,
                        proc.returncode,
                    )
            state.processes = alive
            while len(state.processes) > wanted.spec.parallelism:
                await _terminate(state.processes.pop())
            while len(state.processes) < wanted.spec.parallelism:
                state.processes.append(await self._spawn(name, digest))

    def _note(self, pipeline: str, line: str) -> None:
        """A line in the pipeline's worker log, where its workers' own lines go."""
        with open(self._log_dir / f"worker-{pipeline}.log", "a") as out:
            out.write(f"[tusk] {line}\n")

    async def _spawn(self, pipeline: str, image: str | None) -> asyncio.subprocess.Process:
        env = dict(os.environ, **self._env)
        if self._config_path is not None:
            env["TUSK_CONFIG"] = str(self._config_path)
        env.pop(WORKER_IMAGE_ENV, None)
        if image is not None:
            env[WORKER_IMAGE_ENV] = image
            env[IMAGE_CACHE_ENV] = str(self._images.store.directory)
        out = open(self._log_dir / f"worker-{pipeline}.log", "ab")  # noqa: ASYNC230, SIM115  (a log file, handed to the child)
        try:
            scheduler = os.getpid()
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.scheduler.worker", pipeline,
                env=env, stdout=out, stderr=out, start_new_session=True,
                preexec_fn=lambda: _die_with(scheduler),
            )  # fmt: skip
        finally:
            out.close()

    async def _stop(self, name: str) -> None:
        state = self._pipelines.pop(name, None)
        if state is not None:
            await asyncio.gather(*(_terminate(p) for p in state.processes))

    async def close(self) -> None:
        # Every worker at once, under one shared grace: one after the other, eight
        # pipelines would outlast the supervisor's stop limit for the scheduler.
        await asyncio.gather(*(self._stop(name) for name in list(self._pipelines)))
        await self._images.close()

    def status(self) -> list[dict[str, Any]]:
        entries = []
        for name, state in sorted(self._pipelines.items()):
            entry: dict[str, Any] = {
                "pipeline": name,
                "workers": [p.pid for p in state.processes if p.returncode is None],
                "restarts": state.restarts,
            }
            problem = self._images.problem(name, state.version)
            if problem is not None:
                # No worker can run without the image: the jobs fail now (the engine).
                entry["problems"] = [{"reason": "ImagePullFailed", "line": problem,
                                      "fails_jobs": True}]  # fmt: skip
            entries.append(entry)
        return entries

    def worker_pids(self, pipeline: str) -> list[int]:
        state = self._pipelines.get(pipeline)
        return [p.pid for p in state.processes if p.returncode is None] if state else []


async def _terminate(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the worker's process group, SIGKILL after ``grace`` seconds; cancelled
    meanwhile (the scheduler stopping), SIGKILL at once: its pipeline was already
    forgotten, so nobody else would stop it."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
