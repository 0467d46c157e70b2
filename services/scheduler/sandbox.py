"""The bubblewrap sandbox a local worker runs a datum's command in.

The command sees a root built from parts of the host, as a container would show it:
``/usr`` read-only, ``/bin``, ``/lib``, ``/lib64`` and ``/sbin`` as the usual symlinks
into ``/usr``, a fresh ``/proc``, a minimal ``/dev``, a private ``/tmp``, each input
read-only at ``/pfs/<input name>`` and ``/pfs/out`` writable. Everything else,
``/pfs`` itself included, is read-only. ``--unshare-all`` gives it its own PID,
network (only ``lo``), IPC, UTS and user namespaces; ``--new-session`` keeps it off
the worker's terminal; ``--die-with-parent`` kills it if the worker dies. The
environment is cleared and set explicitly. ``SandboxSettings`` carries the
transform's ``working_dir`` (``--chdir``), ``user`` and extra read-only mounts
(secrets).

Who runs it: ``nobody`` (65534:65534) unless ``transform.user`` names another uid.
bubblewrap maps the worker's uid to it in the sandbox's user namespace, with no
capabilities. ``/etc`` is the sandbox's own, not the host's: a ``passwd`` and a
``group`` knowing root, nobody and the command's user, ``hosts`` with localhost, an
``nsswitch.conf`` reading files and an empty ``resolv.conf`` (no network anyway);
from the host only what programs need to work and nothing that identifies or
authenticates anyone (``alternatives``, ``ld.so.cache``, ``localtime``, ``ssl``, the
system Python's config …). So ``/etc/shadow``, ``/etc/passwd`` of the host, its
keys and its configuration are not there to read.

A sandbox that cannot start (a ``working_dir`` that does not exist, a mount point
bwrap cannot make) is told apart from a command that failed: bwrap reports on a
status pipe (``--json-status-fd``) when the command exits, so a run without that
report ends with ``SandboxRun.setup_error`` set to bwrap's own one-line reason.

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
import atexit
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from shared.platform.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("tusk.sandbox")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Logs kept per run: the first and the last half of this many bytes.
LOG_LIMIT = 1 << 20
_READ_SIZE = 64 << 10
# Host directories the root already shows; a Python under one needs no extra bind.
_SHOWN = (Path("/usr"),)
# Who a command runs as unless transform.user says otherwise.
NOBODY = (65534, 65534)
# The sandbox's own users and groups: the host's are never shown.
_USERS = {"root": (0, 0), "nobody": NOBODY}
_GROUPS = {"root": 0, "nogroup": 65534}
# Host /etc entries programs need, copied into the sandbox's /etc (Debian's
# alternatives symlinks for awk and friends, the dynamic linker's cache, the zone, CA
# certificates, file types, the system Python's config). None identifies or
# authenticates anyone: of /etc/ssl only the public certs, never /etc/ssl/private.
_HOST_ETC = (
    "alternatives", "debian_version", "ld.so.cache", "localtime", "magic", "magic.mime",
    "mime.types", "os-release", "ssl/certs", "ssl/openssl.cnf",
)  # fmt: skip
_PROBE_TIMEOUT = 10.0
# How long bwrap may take to exit after its sandbox was killed, before it is killed too.
_KILL_GRACE = 1.0


class SandboxRun(NamedTuple):
    """How a sandboxed command ended: exit code (``None`` when killed for the timeout),
    its stdout and stderr interleaved and capped, and whether the timeout hit.
    ``setup_error`` is set, to bwrap's reason, when the sandbox could not start and the
    command never ran."""

    exit_code: int | None
    logs: str
    timed_out: bool
    setup_error: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """How the command runs: its directory, its ``(uid, gid)`` in the sandbox (``None``:
    the worker's own), and extra host directories shown read-only (host dir, sandbox
    path), mounted after the inputs and the output."""

    working_dir: str = "/pfs"
    user: tuple[int, int] | None = None
    mounts: tuple[tuple[Path, str], ...] = ()


DEFAULT_SETTINGS = SandboxSettings()


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

    # Where a command runs when transform.working_dir is not set (an image's sandbox
    # says its own).
    default_working_dir = "/pfs"

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
        python_etc = sorted(p.name for p in Path("/etc").glob("python3*"))
        self.host_etc = (*_HOST_ETC, *python_etc)

    def argv(
        self,
        cmd: Sequence[str],
        *,
        inputs: Mapping[str, Path],
        out: Path | None,
        settings: SandboxSettings = DEFAULT_SETTINGS,
    ) -> list[str]:
        """The bwrap command line that runs ``cmd`` with ``inputs`` (name → host dir)
        read-only at ``/pfs/<name>`` and ``out`` writable at ``/pfs/out``."""
        if self.bwrap is None:
            raise FailedPrecondition(_NOT_INSTALLED)
        if not cmd:
            raise FailedPrecondition("the transform has no command to run")
        uid, gid = settings.user if settings.user is not None else NOBODY
        # bwrap maps the worker's uid to this one in the sandbox's user namespace.
        args = [self.bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        args += [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind", "/usr", "/usr",
            "--ro-bind", str(self._etc(uid, gid, settings.mounts)), "/etc",
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
        for source, target in settings.mounts:
            args += ["--ro-bind", str(source), target]
        # The root tmpfs (and the mount points made in it, /pfs included) read-only; the
        # binds and /tmp are mounts of their own and keep their modes.
        args += ["--remount-ro", "/", "--chdir", settings.working_dir, "--", *cmd]
        return args

    def _etc(self, uid: int, gid: int, mounts: Sequence[tuple[Path, str]]) -> Path:
        """The sandbox's /etc for ``uid:gid``, holding the mount points of ``mounts`` under
        /etc (bwrap cannot make them in a read-only bind; empty directories, harmless
        to the datums that do not mount anything there)."""
        etc = sandbox_etc(uid, gid, self.host_etc)
        for _, target in mounts:
            if target.startswith("/etc/"):
                # A clash with a file there is left for bwrap to report.
                with contextlib.suppress(OSError):
                    (etc / target.removeprefix("/etc/")).mkdir(parents=True, exist_ok=True)
        return etc

    def identity(self, user: str | None) -> tuple[int, int] | None:
        """The ``(uid, gid)`` a command runs as for ``transform.user``: ``uid[:gid]``
        numbers, or names the sandbox's ``/etc`` knows (root, nobody, nogroup);
        ``None``: the default, nobody. A uid without a gid takes its passwd group, else
        the same number."""
        if user is None:
            return None
        name, _, group = user.partition(":")
        uid, default_gid = _user_ids(name, user)
        gid = _group_id(group, user) if group else default_gid
        return uid, gid

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
        # Only bwrap reports on the status pipe (a test may run a bare command).
        reports = self.bwrap is not None and bool(argv) and argv[0] == self.bwrap
        status_read, status_write = os.pipe()
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    *(_with_status_fd(argv, status_write) if reports else argv),
                    stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=dict(env),
                    start_new_session=True,
                    pass_fds=(status_write,),
                )
            except FileNotFoundError:
                raise FailedPrecondition(f"cannot run {argv[0]!r}: not found") from None
            finally:
                os.close(status_write)
            exit_code, timed_out = await self._wait(process, data, logs, timeout)
            text = logs.text()
            if not reports or timed_out or exit_code is None or _command_exited(status_read):
                return SandboxRun(exit_code, text, timed_out)
            return SandboxRun(exit_code, text, timed_out, _setup_error(text, exit_code))
        finally:
            os.close(status_read)

    async def _wait(
        self,
        process: asyncio.subprocess.Process,
        data: bytes,
        logs: _LogBuffer,
        timeout: float | None,
    ) -> tuple[int | None, bool]:
        """Feed stdin, collect the logs and wait (killing on timeout or cancel); return
        (exit code or ``None`` after a timeout, whether the timeout hit)."""
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
        return (None if timed_out else process.returncode), timed_out


_ETC_PREFIX = "tusk-sandbox-etc-"
# An id the kernel takes: 0 .. 2^32 - 2 (2^32 - 1 is "no id").
_MAX_ID = (1 << 32) - 2


def _number(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _user_ids(name: str, user: str) -> tuple[int, int]:
    uid = _number(name)
    if uid is not None:
        known = [ids for ids in _USERS.values() if ids[0] == uid]
        return known[0] if known else (uid, uid)
    if name in _USERS:
        return _USERS[name]
    raise InvalidArgument(
        f"transform.user {user!r}: no user {name!r} in the sandbox; give uid[:gid] numbers"
    )


def _group_id(group: str, user: str) -> int:
    gid = _number(group)
    if gid is not None:
        return gid
    if group in _GROUPS:
        return _GROUPS[group]
    raise InvalidArgument(
        f"transform.user {user!r}: no group {group!r} in the sandbox; give uid[:gid] numbers"
    )


def _etc_files(uid: int, gid: int) -> dict[str, str]:
    """The sandbox's own /etc files for a command running as ``uid:gid``."""
    passwd = [
        "root:x:0:0:root:/root:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    ]
    group = ["root:x:0:", "nogroup:x:65534:"]
    # The command's own user, so whoami, getpass and the like find a name.
    if uid not in (ids[0] for ids in _USERS.values()):
        passwd.append(f"tusk:x:{uid}:{gid}:tusk datum:/tmp:/bin/sh")
    if gid not in _GROUPS.values():
        group.append(f"tusk:x:{gid}:")
    return {
        "passwd": "\n".join(passwd) + "\n",
        "group": "\n".join(group) + "\n",
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "resolv.conf": "",
    }


@functools.cache
def _etc_root() -> Path:
    """One private directory per process, removed when the process exits; those of
    processes that died without exiting (SIGKILL) are removed by the next one."""
    remove_dead_etc_roots(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"{_ETC_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def remove_dead_etc_roots(parent: Path) -> None:
    for path in parent.glob(f"{_ETC_PREFIX}*-*"):
        pid = path.name.removeprefix(_ETC_PREFIX).split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and path.stat().st_uid == os.geteuid() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@functools.cache
def sandbox_etc(uid: int, gid: int, host: tuple[str, ...]) -> Path:
    """A host directory, made once per process and identity, to bind read-only at the
    sandbox's /etc: its own files for ``uid:gid`` and copies of the ``host`` entries
    (one bind instead of one per entry: each bind costs bwrap time on every datum)."""
    directory = _etc_root() / f"{uid}-{gid}"
    directory.mkdir(mode=0o755)
    for name in host:
        _copy_host_entry(Path("/etc") / name, directory / name)
    for name, text in _etc_files(uid, gid).items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o644)
    return directory


def _copy_host_entry(source: Path, target: Path) -> None:
    # Symlinks stay symlinks: they point into /usr, which the sandbox shows.
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        elif source.is_file():
            shutil.copyfile(source, target)
    except OSError as exc:  # missing here, or unreadable: the sandbox goes without
        log.debug("sandbox /etc: not copying %s: %s", source, exc)


def _with_status_fd(argv: Sequence[str], fd: int) -> list[str]:
    """bwrap's ``argv`` with bwrap told to report on ``fd`` (the fd number is known only
    when the pipe is made, after ``argv()`` built the line)."""
    return [argv[0], "--json-status-fd", str(fd), *argv[1:]]


def _command_exited(status: int) -> bool:
    """Whether bwrap reported the command's exit on the status pipe (it reports only
    once the command ran; a sandbox that failed to start reports no exit)."""
    os.set_blocking(status, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while piece := os.read(status, _READ_SIZE):
            chunks.append(piece)
    decoder = json.JSONDecoder()
    text = b"".join(chunks).decode(errors="replace")
    position = 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        try:
            document, position = decoder.raw_decode(text, position)
        except ValueError:
            return False
        if isinstance(document, dict) and "exit-code" in document:
            return True
    return False


def _setup_error(logs: str, exit_code: int) -> str:
    lines = [line for line in logs.splitlines() if line.startswith("bwrap: ")]
    if lines:
        return lines[-1].removeprefix("bwrap: ")
    return f"bwrap exited with code {exit_code} before the command started"


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


__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SETTINGS",
    "LOG_LIMIT",
    "Sandbox",
    "SandboxRun",
    "SandboxSettings",
    "bwrap_available",
    "python_dirs",
]
