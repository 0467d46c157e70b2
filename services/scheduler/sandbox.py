"""The bubblewrap sandbox a local worker runs a datum's command in.

The command sees a root built from parts of the host, as a container would show it:
``/usr`` and ``/etc`` read-only, ``/bin``, ``/lib``, ``/lib64`` and ``/sbin`` as the
usual symlinks into ``/usr``, a fresh ``/proc``, a minimal ``/dev``, a private
``/tmp``, each input read-only at ``/pfs/<input name>`` and ``/pfs/out`` writable.
Everything else, ``/pfs`` itself included, is read-only. ``--unshare-all`` gives it
its own PID, network (only ``lo``), IPC, UTS and user namespaces; ``--new-session``
keeps it off the worker's terminal; ``--die-with-parent`` kills it if the worker
dies. The environment is cleared and set explicitly.

The project's Python lives outside ``/usr`` on some machines (pyenv, a venv); those
directories are bound read-only at their own paths, and the base interpreter's
``bin`` leads ``PATH``, so ``python3`` in a command is the interpreter Tusk runs on.

Killing: the sandboxed child is PID 1 of a new PID namespace; when it dies the kernel
kills every process in that namespace, however the command forked or whatever
process group it made. So a timeout or a cancel SIGKILLs that child, lets bwrap reap
it and exit, and then SIGKILLs bwrap's own process group if bwrap is still there
(``--die-with-parent`` takes the sandbox down with bwrap in that case, too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from shared.errors import FailedPrecondition

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Logs kept per run: the first and the last half of this many bytes.
LOG_LIMIT = 1 << 20
_READ_SIZE = 64 << 10
# Host directories the root already shows; a Python under one needs no extra bind.
_SHOWN = (Path("/usr"), Path("/etc"))
_PROBE_TIMEOUT = 10.0
# How long bwrap may take to exit after its sandbox was killed, before it is killed too.
_KILL_GRACE = 1.0


class SandboxRun(NamedTuple):
    """How a sandboxed command ended: exit code (``None`` when killed for the timeout),
    its stdout and stderr interleaved and capped, and whether the timeout hit."""

    exit_code: int | None
    logs: str
    timed_out: bool


def python_dirs() -> tuple[Path, ...]:
    """The directories of this interpreter (venv and base install) that lie outside
    ``/usr``: they must be bound into the sandbox for ``python3`` to work there."""
    found: list[Path] = []
    for prefix in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix):
        path = Path(prefix).resolve()
        if any(path == shown or shown in path.parents for shown in _SHOWN):
            continue
        if any(path == known or known in path.parents for known in found):
            continue
        found.append(path)
    return tuple(found)


class Sandbox:
    """Builds bwrap command lines and runs them.

    ``bwrap`` is the binary to use (default: ``bwrap`` on ``PATH``); ``host_dirs`` are
    extra host directories shown read-only at their own paths (default:
    ``python_dirs()``); ``log_limit`` caps the logs kept per run.
    """

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        host_dirs: Sequence[Path] | None = None,
        log_limit: int = LOG_LIMIT,
    ) -> None:
        self.bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self.host_dirs = tuple(host_dirs) if host_dirs is not None else python_dirs()
        self.log_limit = log_limit
        # The base interpreter's bin first, so `python3` is the project's Python.
        interpreter_bins = [str(d / "bin") for d in self.host_dirs if (d / "bin").is_dir()]
        self.path = ":".join([*interpreter_bins[:1], DEFAULT_PATH])

    def argv(
        self, cmd: Sequence[str], *, inputs: Mapping[str, Path], out: Path | None
    ) -> list[str]:
        """The bwrap command line that runs ``cmd`` with ``inputs`` (name → host dir)
        read-only at ``/pfs/<name>`` and ``out`` writable at ``/pfs/out``."""
        if self.bwrap is None:
            raise FailedPrecondition(_NOT_INSTALLED)
        if not cmd:
            raise FailedPrecondition("the transform has no command to run")
        args = [
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind", "/usr", "/usr",
            "--ro-bind", "/etc", "/etc",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
        ]  # fmt: skip
        for directory in self.host_dirs:
            args += ["--ro-bind", str(directory), str(directory)]
        args += ["--perms", "0755", "--dir", "/pfs"]
        for name, source in inputs.items():
            args += ["--ro-bind", str(source), f"/pfs/{name}"]
        if out is not None:
            args += ["--bind", str(out), "/pfs/out"]
        # The root tmpfs (and the mount points made in it, /pfs included) read-only; the
        # binds and /tmp are mounts of their own and keep their modes.
        args += ["--remount-ro", "/", "--chdir", "/pfs", "--", *cmd]
        return args

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The whole environment of a sandboxed command: ``PATH``, ``HOME=/tmp``,
        ``LANG=C.UTF-8``, then ``extra`` (which may override them)."""
        return {"PATH": self.path, "HOME": "/tmp", "LANG": "C.UTF-8", **extra}

    async def run(
        self,
        argv: Sequence[str],
        stdin_lines: Sequence[str],
        env: Mapping[str, str],
        timeout: float | None,
    ) -> SandboxRun:
        """Run ``argv`` (from ``argv()``) with exactly ``env``, feeding ``stdin_lines``
        (joined by newlines, newline-terminated) to its stdin.

        Past ``timeout`` seconds the whole process group is killed (SIGKILL) and reaped.
        If the caller is cancelled, the group is killed too and the cancel re-raised.
        """
        data = ("\n".join(stdin_lines) + "\n").encode() if stdin_lines else b""
        logs = _LogBuffer(self.log_limit)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise FailedPrecondition(f"cannot run {argv[0]!r}: not found") from None
        timed_out = False
        try:
            async with asyncio.TaskGroup() as group:
                assert process.stdout is not None
                group.create_task(_collect(process.stdout, logs))
                if process.stdin is not None:
                    group.create_task(_feed(process.stdin, data))
                try:
                    async with asyncio.timeout(timeout):
                        await process.wait()
                except TimeoutError:
                    timed_out = True
                    # The readers end when the killed group's pipes close.
                    await _kill_and_reap(process)
        finally:
            if process.returncode is None:  # cancelled, or a reader failed
                await _kill_and_reap(process)
                # A cancelled reader may have left the pipe paused; reading to EOF lets
                # the transport close instead of leaking.
                if process.stdout is not None:
                    with contextlib.suppress(Exception):
                        await process.stdout.read()
        return SandboxRun(None if timed_out else process.returncode, logs.text(), timed_out)


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    """Kill everything in the sandbox, then make sure bwrap is gone, and reap it.

    Killing bwrap's child (PID 1 of the sandbox's PID namespace) makes the kernel kill
    everything in that namespace at once; bwrap notices and exits by itself. Killing
    bwrap's group is the fallback (``--die-with-parent`` then takes the sandbox down).
    """
    for child in _children(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), _KILL_GRACE)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _children(pid: int) -> list[int]:
    # bwrap is alive and not reaped, so its children's pids cannot have been reused.
    try:
        listing = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in listing.split()]


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    # A command that exits without reading all its input is not an error of ours.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


async def _collect(stdout: asyncio.StreamReader, logs: _LogBuffer) -> None:
    while piece := await stdout.read(_READ_SIZE):
        logs.add(piece)


class _LogBuffer:
    """The first and the last ``limit / 2`` bytes of a stream, and how much was between."""

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._cut = 0

    def add(self, data: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size > self._tail_limit:
            excess = self._tail_size - self._tail_limit
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_size -= len(first)
                self._cut += len(first)
            else:
                self._tail[0] = first[excess:]
                self._tail_size -= excess
                self._cut += excess

    def text(self) -> str:
        head = self._head.decode(errors="replace")
        tail = b"".join(self._tail).decode(errors="replace")
        if not self._cut:
            return head + tail
        return f"{head}\n[... {self._cut} bytes of logs cut ...]\n{tail}"


_NOT_INSTALLED = (
    "bubblewrap (bwrap) is not installed or not on PATH; install it with "
    "'apt-get install bubblewrap'"
)


def bwrap_available() -> str | None:
    """``None`` if datums can run in a bubblewrap sandbox here, else a one-line reason
    (not installed, or the kernel refuses the namespaces). Probed once per binary."""
    path = shutil.which("bwrap")
    if path is None:
        return _NOT_INSTALLED
    return _probe(path)


@functools.cache
def _probe(path: str) -> str | None:
    sandbox = Sandbox(bwrap=path)
    argv = sandbox.argv(["true"], inputs={}, out=None)
    try:
        done = subprocess.run(
            argv,
            env=sandbox.environment({}),
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run bubblewrap at {path}: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit code {done.returncode}"
        return f"bubblewrap cannot create a sandbox here: {reason}"
    return None


__all__ = ["DEFAULT_PATH", "LOG_LIMIT", "Sandbox", "SandboxRun", "bwrap_available", "python_dirs"]
