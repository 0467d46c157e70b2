"""Running a datum's command in the pod's user container instead of a bubblewrap sandbox.

A Kubernetes worker pod (see ``k8s_objects``) has the user's image next to the Tusk
worker. The two share ``/pfs`` (the datum's files) and ``/tusk`` (this protocol's
control files). The user container runs ``RUNNER_SCRIPT``, a POSIX ``sh`` loop, so any
image with ``/bin/sh`` works; nothing of Tusk is copied into it.

One datum, seen from the worker (``PodSandbox.run``):

1. rename the datum's inputs to ``/pfs/<name>`` and its output dir to ``/pfs/out``
   (the scratch dir is on the same volume, so these are renames, not copies);
2. write ``/tusk/run.sh`` (the environment and the command, shell-quoted) and
   ``/tusk/stdin``, then write a request id into the FIFO ``/tusk/go``;
3. the runner runs ``run.sh`` in ``/pfs`` with that stdin, output to ``/tusk/log``,
   then writes ``<id> <exit code>`` to ``/tusk/exit`` (write, then rename);
4. on a timeout or a cancel the worker writes ``kill`` into the FIFO ``/tusk/ev``: the
   runner is PID 1 of its container, so it kills every other process there (however
   the command forked) and answers ``<id> killed``;
5. the worker renames the directories back, and the datum runner stores ``/pfs/out``.

Both FIFOs are made by the runner with mode 0666, because the two containers need
not run as the same user; the runner also makes ``/pfs/out`` writable by all after a
run, so the worker (uid 10001) can read and remove what any user id wrote.

Unlike bubblewrap, the pod does not make inputs read-only to a root command: they are
scratch copies, thrown away after the datum, so a write there changes nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.scheduler.sandbox import (
    DEFAULT_SETTINGS,
    LOG_LIMIT,
    Sandbox,
    SandboxRun,
    SandboxSettings,
)
from shared.platform.errors import FailedPrecondition, InvalidArgument

PFS_DIR = "/pfs"
CTL_DIR = "/tusk"
_REQUEST = "tusk-pod-request"
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Polling the exit file: fast at first (most datums are short), then gentler.
_POLL_FIRST = 0.002
_POLL_MAX = 0.05

# The user container's command. ``$$ = 1`` is checked before the kill-all, so running
# it outside a container of its own (a test without a PID namespace) kills only the job.
RUNNER_SCRIPT = r"""set -u
C=${TUSK_CTL:-/tusk}
P=${TUSK_PFS:-/pfs}
cd "$C" || exit 1
rm -f go ev exit exit.tmp
mkfifo -m 0666 ev || exit 1
mkfifo -m 0666 go || exit 1
while :; do
  read -r id < go || continue
  ( cd "$P" && sh "$C/run.sh" < "$C/stdin" > "$C/log" 2>&1; echo "exit $?" > "$C/ev" ) &
  job=$!
  read -r what code < ev
  if [ "$what" != exit ]; then
    code=killed
    if [ "$$" -eq 1 ]; then
      for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" -eq 1 ] || kill -9 "$p" 2>/dev/null
      done
    else
      kill -9 "$job" 2>/dev/null
    fi
  fi
  wait
  chmod -R a+rwX "$P/out" 2>/dev/null
  echo "$id $code" > exit.tmp && mv -f exit.tmp exit
done
"""


def run_script(cmd: Sequence[str], env: Mapping[str, str], working_dir: str | None = None) -> str:
    """The ``run.sh`` for one command: its directory (``None``: the runner's, ``/pfs``),
    exports, then ``exec`` of the quoted argv. Names that are not shell identifiers (an
    input called ``my-input``) go through ``env``, which takes any name."""
    lines = [] if working_dir is None else [f"cd {shlex.quote(working_dir)} || exit 1"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if _IDENTIFIER_RE.match(k)]
    odd = [shlex.quote(f"{k}={v}") for k, v in env.items() if not _IDENTIFIER_RE.match(k)]
    prefix = ["env", *odd] if odd else []
    lines.append("exec " + " ".join([*prefix, *(shlex.quote(a) for a in cmd)]))
    return "\n".join(lines) + "\n"


def _read_capped(path: Path, limit: int) -> str:
    """The first and last ``limit / 2`` bytes of the log, with a note of what was cut."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= limit:
                return f.read().decode(errors="replace")
            head = f.read(limit // 2)
            f.seek(size - (limit - limit // 2))
            tail = f.read()
    except FileNotFoundError:
        return ""
    cut = size - len(head) - len(tail)
    return (
        f"{head.decode(errors='replace')}\n[... {cut} bytes of logs cut ...]\n"
        f"{tail.decode(errors='replace')}"
    )


def _write_fifo(path: Path, line: str) -> bool:
    """Write one line into a FIFO if someone reads it now; ``False`` if nobody does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)
    return True


class PodSandbox(Sandbox):
    """A ``Sandbox`` whose commands run in the pod's user container (see the module doc).

    ``ready_timeout`` is how long a datum waits for the runner to listen (the user
    container may still be starting or pulling its image) before the worker gives up
    with an error naming the likely cause; ``kill_grace`` is how long a killed
    command may take to be confirmed dead.
    """

    def __init__(
        self,
        *,
        pfs: Path = Path(PFS_DIR),
        ctl: Path = Path(CTL_DIR),
        log_limit: int = LOG_LIMIT,
        ready_timeout: float = 300.0,
        kill_grace: float = 10.0,
    ) -> None:
        # No bwrap here: the pod is the sandbox.
        self.bwrap = None
        self.host_dirs = ()
        self.path = ""
        self.log_limit = log_limit
        self.pfs = pfs
        self.ctl = ctl
        self.ready_timeout = ready_timeout
        self.kill_grace = kill_grace

    def argv(
        self,
        cmd: Sequence[str],
        *,
        inputs: Mapping[str, Path],
        out: Path | None,
        settings: SandboxSettings = DEFAULT_SETTINGS,
    ) -> list[str]:
        """A request for ``run``: the command and where the datum's directories are.

        The user container runs as its image's user and sees only the shared volumes, so
        ``transform.user`` and secrets mounted as files are refused (the datum fails).
        """
        if not cmd:
            raise FailedPrecondition("the transform has no command to run")
        if settings.user is not None:
            raise InvalidArgument("transform.user is not supported in Kubernetes worker pods")
        if settings.mounts:
            raise InvalidArgument(
                "secrets with mount_path are not supported in Kubernetes worker pods; use env_var"
            )
        request = {
            "cmd": list(cmd),
            "inputs": {name: str(path) for name, path in inputs.items()},
            "out": None if out is None else str(out),
            # The runner already works in /pfs (its volume, wherever it is mounted).
            "working_dir": None if settings.working_dir == PFS_DIR else settings.working_dir,
        }
        return [_REQUEST, json.dumps(request)]

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """Only the datum's variables: the image's own environment (``PATH``…) stays."""
        return dict(extra)

    async def run(
        self,
        argv: Sequence[str],
        stdin_lines: Sequence[str],
        env: Mapping[str, str],
        timeout: float | None,
    ) -> SandboxRun:
        """Run the request from ``argv()`` in the user container (see the module doc)."""
        if len(argv) != 2 or argv[0] != _REQUEST:
            raise FailedPrecondition("PodSandbox.run takes the request that PodSandbox.argv made")
        request = json.loads(argv[1])
        moved = self._place(request["inputs"], request["out"])
        try:
            return await self._run_placed(
                request["cmd"], request["working_dir"], stdin_lines, env, timeout
            )
        finally:
            _move_back(moved)

    def _place(self, inputs: Mapping[str, str], out: str | None) -> list[tuple[Path, Path]]:
        """Rename the datum's directories to where the user container sees them."""
        moves = [(Path(src), self.pfs / name) for name, src in inputs.items()]
        if out is not None:
            Path(out).chmod(0o777)  # the user's command may run as any user id
            moves.append((Path(out), self.pfs / "out"))
        done: list[tuple[Path, Path]] = []
        try:
            for src, dst in moves:
                if dst.is_dir() and not dst.is_symlink():
                    shutil.rmtree(dst)  # left by a worker that died mid-datum
                else:
                    with contextlib.suppress(FileNotFoundError):
                        dst.unlink()
                src.rename(dst)
                done.append((src, dst))
        except BaseException:
            _move_back(done)
            raise
        return done

    async def _run_placed(
        self,
        cmd: Sequence[str],
        working_dir: str | None,
        stdin_lines: Sequence[str],
        env: Mapping[str, str],
        timeout: float | None,
    ) -> SandboxRun:
        request_id = uuid.uuid4().hex
        (self.ctl / "run.sh").write_text(run_script(cmd, env, working_dir))
        (self.ctl / "stdin").write_text("\n".join(stdin_lines) + "\n" if stdin_lines else "")
        await self._send_go(request_id)
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                code = await self._wait_exit(request_id)
        except TimeoutError:
            timed_out = True
            code = await self._kill(request_id)
        except asyncio.CancelledError:
            await self._kill(request_id)
            raise
        logs = _read_capped(self.ctl / "log", self.log_limit)
        return SandboxRun(None if timed_out else code, logs, timed_out)

    async def _send_go(self, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not _write_fifo(self.ctl / "go", request_id):
            if loop.time() > deadline:
                raise FailedPrecondition(
                    f"the pipeline's user container did not start listening within "
                    f"{self.ready_timeout:.0f}s (see the worker pod's status: image pull "
                    f"or crash?)"
                )
            await asyncio.sleep(0.05)

    async def _wait_exit(self, request_id: str) -> int | None:
        """The command's exit code once the runner reports it (``None`` if it was killed)."""
        delay = _POLL_FIRST
        path = self.ctl / "exit"
        while True:
            with contextlib.suppress(FileNotFoundError):
                done_id, _, code = path.read_text().strip().partition(" ")
                if done_id == request_id:
                    return None if code == "killed" else int(code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def _kill(self, request_id: str) -> int | None:
        # Nobody reading "ev" means the command just ended: its exit is on its way.
        _write_fifo(self.ctl / "ev", "kill")
        try:
            async with asyncio.timeout(self.kill_grace):
                return await self._wait_exit(request_id)
        except TimeoutError:
            raise FailedPrecondition(
                f"the pipeline's user container did not confirm the kill within "
                f"{self.kill_grace:.0f}s"
            ) from None


def _move_back(moved: list[tuple[Path, Path]]) -> None:
    for src, dst in reversed(moved):
        if dst.is_dir() and not dst.is_symlink():
            dst.rename(src)
            continue
        # The command removed or replaced the directory. A symlink must not come back:
        # followed in the worker's container it would store the worker's own files.
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        src.mkdir(exist_ok=True)
