"""Datum batching (``transform.datum_batching``, as in Pachyderm): one sandbox, many datums.

The command starts once for the datums of a task message and asks for each in turn with
``tusk next datum``, so the sandbox's start (bubblewrap, the interpreter, a model
loaded once) is paid per batch instead of per datum:

1. The sandbox starts with every input of the batch bound read-only at ``/pfs/<name>``
   (empty) and ``/pfs/out`` writable, like a datum's, plus ``/run/tusk``: a ``tusk``
   script on ``PATH`` and two FIFOs, ``request`` and ``answer``.
2. ``tusk next datum`` writes a line to ``request`` and waits for a line on ``answer``.
   The worker then stores the previous datum's ``/pfs/out`` as that datum's output (and
   publishes its result), empties ``/pfs/out`` and the inputs, places the next datum's
   files, writes its variables to ``/run/tusk/datum.env`` (``. /run/tusk/datum.env``
   sets ``$<input>``, ``PACH_DATUM_ID`` … as a datum without batching has them), and
   answers ``ok``.
3. When no datum is left, the worker stops the sandbox (the command never has to know).

A datum ends ``FAILED`` alone when the command exits non-zero (or is killed, or passes
``datum_timeout``) while the datum is its current one; the datums not yet handed out go
on in a fresh sandbox. A command that exits 0 after asking ends its current datum as a
success. A command that exits without asking for any datum fails the first waiting one
("… without asking for a datum"), so a spec that forgot ``tusk next datum`` fails
loudly instead of looping. Lazy inputs are copied; ``err_cmd`` is refused with datum
batching (spec validation).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from services.scheduler.datum_output import MountedInput
from services.scheduler.datum_runner import (
    _check_name,
    _collect,
    _datum_env,
    _materialise,
    _Outcome,
    _Run,
    _settings,
    mounted_inputs,
)
from services.scheduler.datum_secrets import SecretValues, mask, secret_env, used_values
from services.scheduler.sandbox import Sandbox, _kill_and_reap
from services.scheduler.tasks import DatumResult, DatumTask, failed_result
from shared.platform.errors import InvalidArgument, NotFound
from shared.storage.chunking import ChunkCache
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore

# Where the sandbox sees its control directory (the script, the FIFOs, datum.env).
CONTROL = "/run/tusk"
# A tmpfs for the control directory, where there is one.
_SHM = "/dev/shm"
# Logs kept per datum of a batch: the first bytes the command wrote while it was current.
_DATUM_LOG_LIMIT = 1 << 20
_READ_SIZE = 64 << 10
# `tusk next datum` inside the sandbox: plain sh, so asking costs a fork of sh, not a
# Python start. echo and read are builtins; the worker holds both FIFOs open, so neither
# open blocks.
_SCRIPT = f"""#!/bin/sh
# tusk next datum: hand back the current datum (its /pfs/out is stored) and wait until
# the next one is in /pfs. With no datum left the worker ends this sandbox.
if [ "$#" -ne 2 ] || [ "$1" != next ] || [ "$2" != datum ]; then
  echo "usage: tusk next datum (the only tusk command inside a pipeline's sandbox)" >&2
  exit 2
fi
echo next > {CONTROL}/request
read -r answer < {CONTROL}/answer
[ "$answer" = ok ]
"""

ResultSink = Callable[[DatumTask, DatumResult], Awaitable[None]]


async def run_batch(
    store: ObjectStore,
    tasks: Sequence[DatumTask],
    *,
    workdir: Path,
    on_result: ResultSink,
    cache: ChunkCache | None = None,
    sandbox: Sandbox | None = None,
    index: FileIndex | None = None,
    secrets: SecretValues | None = None,
) -> None:
    """Run ``tasks`` (datums of one job, in order) through their command started once,
    awaiting ``on_result`` as each datum ends; a failed datum's successors go on in a
    fresh sandbox. Errors of the environment (bwrap missing, the store down) raise."""
    pending = deque(tasks)
    values = secrets or {}
    while pending:
        before = len(pending)
        await _one_sandbox(
            store, pending, workdir, on_result, cache, sandbox or Sandbox(), index, values
        )
        assert len(pending) < before, "each sandbox ends at least one datum"


class _Control:
    """The worker's end of ``/run/tusk``: requests counted as they arrive, answers sent."""

    def __init__(self, directory: Path) -> None:
        os.mkfifo(directory / "request", 0o666)
        os.mkfifo(directory / "answer", 0o666)
        script = directory / "bin" / "tusk"
        script.parent.mkdir()
        script.write_text(_SCRIPT)
        script.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        self.directory = directory
        # Held open read-write: opens on the other side never block, and the request end
        # never reads EOF between two asks.
        self._request = os.open(directory / "request", os.O_RDWR | os.O_NONBLOCK)
        self._answer = os.open(directory / "answer", os.O_RDWR | os.O_NONBLOCK)
        self.requests: asyncio.Queue[None] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self._request, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._request, 4096)
        except BlockingIOError:
            return
        for _ in range(data.count(b"\n")):
            self.requests.put_nowait(None)

    def answer(self) -> None:
        os.write(self._answer, b"ok\n")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._request)
        os.close(self._request)
        os.close(self._answer)


class _Logs:
    """The sandbox's stdout and stderr, cut into one piece per datum."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._cut = 0

    def add(self, data: bytes) -> None:
        if self._size < _DATUM_LOG_LIMIT:
            self._parts.append(data[: _DATUM_LOG_LIMIT - self._size])
        else:
            self._cut += len(data)
        self._size += len(data)

    def take(self) -> str:
        text = b"".join(self._parts).decode(errors="replace")
        if self._cut:
            text += f"\n[... {self._cut} bytes of logs cut ...]\n"
        self._parts, self._size, self._cut = [], 0, 0
        return text


async def _pump(stdout: asyncio.StreamReader, logs: _Logs) -> None:
    while data := await stdout.read(_READ_SIZE):
        logs.add(data)


def _empty(directory: Path) -> None:
    """Remove what is in ``directory``, keeping the directory (a bind mount's source)."""
    with os.scandir(directory) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _env_file(variables: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines a POSIX shell can source."""
    lines = []
    for name, value in sorted(variables.items()):
        quoted = value.replace("'", "'\"'\"'")
        lines.append(f"export {name}='{quoted}'\n")
    return "".join(lines)


async def _one_sandbox(
    store: ObjectStore,
    pending: deque[DatumTask],
    workdir: Path,
    on_result: ResultSink,
    cache: ChunkCache | None,
    sandbox: Sandbox,
    index: FileIndex | None,
    secrets: SecretValues,
) -> None:
    """Start the command once and hand it datums from ``pending`` until none is left or
    it stops; every datum taken from ``pending`` gets its result."""
    scratch = Path(tempfile.mkdtemp(prefix="batch-", dir=workdir))
    control_dir = _control_directory(scratch)
    try:
        first = pending[0]
        pfs = scratch / "pfs"
        out = pfs / "out"
        out.mkdir(parents=True)
        names = sorted({part.name for task in pending for part in task.inputs})
        for name in names:
            _check_name(name)
            (pfs / name).mkdir()
        settings = _settings(first, sandbox, secrets, scratch / "secrets")
        settings = replace(settings, mounts=(*settings.mounts, (control_dir, CONTROL)))
        job_env = {
            "PACH_JOB_ID": first.job_id,
            "PACH_OUTPUT_COMMIT_ID": first.output_commit,
            "TUSK_JOB_ID": first.job_id,
            "TUSK_PIPELINE": first.pipeline,
            "PATH": f"{CONTROL}/bin:{sandbox.environment({})['PATH']}",
            **first.env,
            **secret_env(first.secrets, secrets),
        }
        argv = sandbox.argv(
            first.cmd, inputs={n: pfs / n for n in names}, out=out, settings=settings
        )
        control = _Control(control_dir)
        try:
            await _drive(
                store, pending, argv, sandbox.environment(job_env), control, pfs, out,
                on_result, cache, index, secrets,
            )  # fmt: skip
        finally:
            control.close()
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        if not control_dir.is_relative_to(scratch):
            shutil.rmtree(control_dir, ignore_errors=True)


def _control_directory(scratch: Path) -> Path:
    """Where ``/run/tusk`` comes from: on tmpfs (``/dev/shm``) when there is one, since
    ``datum.env`` is rewritten for every datum (on the worker's disk that one small write
    was ~7% of a worker's loop under load); else in the batch's scratch directory."""
    with contextlib.suppress(OSError):
        return Path(tempfile.mkdtemp(prefix="tusk-batch-", dir=_SHM))
    directory = scratch / "control"
    directory.mkdir()
    return directory


async def _drive(
    store: ObjectStore,
    pending: deque[DatumTask],
    argv: Sequence[str],
    env: Mapping[str, str],
    control: _Control,
    pfs: Path,
    out: Path,
    on_result: ResultSink,
    cache: ChunkCache | None,
    index: FileIndex | None,
    secrets: SecretValues,
) -> None:
    first = pending[0]
    data = ("\n".join(first.stdin) + "\n").encode() if first.stdin else None
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
    )
    logs = _Logs()
    finish = _Finisher(logs, on_result, store, out, index, secrets)
    async with asyncio.TaskGroup() as group:
        assert process.stdout is not None
        group.create_task(_pump(process.stdout, logs))
        if data and process.stdin is not None:
            process.stdin.write(data)
            process.stdin.close()
        exited = group.create_task(process.wait())
        try:
            await _hand_out_all(store, pending, process, exited, control, pfs, cache, finish)
        finally:
            # The pump ends once the sandbox is gone; nothing else of the group waits.
            if process.returncode is None:
                await _kill_and_reap(process)


_Current = tuple[DatumTask, _Run, dict[str, MountedInput]]


class _Finisher:
    """Ends datums of one sandbox: stores a successful one's output, masks secrets in its
    logs and error, hands the result on."""

    def __init__(
        self,
        logs: _Logs,
        on_result: ResultSink,
        store: ObjectStore,
        out: Path,
        index: FileIndex | None,
        secrets: SecretValues,
    ) -> None:
        self.logs = logs
        self.on_result = on_result
        self.store = store
        self.out = out
        self.index = index
        self.secrets = secrets

    async def datum(self, current: _Current, outcome: _Outcome) -> None:
        task, run, mounted = current
        run.logs.append(self.logs.take())
        try:
            if outcome.state == "SUCCESS":
                result = await _collect(self.store, self.out, mounted, self.index, run, outcome)
            else:
                result = run.result(outcome)
        except (InvalidArgument, NotFound) as exc:
            run.logs.append(f"[tusk] {exc.message}\n")
            result = run.result(_Outcome("FAILED", None, exc.message))
        if task.secrets:
            hidden = used_values(task.secrets, self.secrets)
            error = mask(result.error, hidden) if result.error else None
            result = replace(result, logs=mask(result.logs, hidden), error=error)
        await self.on_result(task, result)

    async def unasked(self, task: DatumTask, code: int | None) -> None:
        reason = (
            f"command exited with code {code} before asking for a datum "
            "(with datum_batching the command must call `tusk next datum`)"
        )
        await self.on_result(task, failed_result(reason, logs=self.logs.take()))


async def _hand_out_all(
    store: ObjectStore,
    pending: deque[DatumTask],
    process: asyncio.subprocess.Process,
    exited: asyncio.Task[int],
    control: _Control,
    pfs: Path,
    cache: ChunkCache | None,
    finish: _Finisher,
) -> None:
    """Answer the command's asks with datums until none is left, it exits, or its current
    datum times out."""
    current: _Current | None = None
    while True:
        timeout = current[0].datum_timeout if current is not None else None
        ask = asyncio.ensure_future(control.requests.get())
        try:
            done, _ = await asyncio.wait(
                {ask, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ask.cancel()
        if ask in done:
            if current is not None:
                await finish.datum(current, _Outcome("SUCCESS", 0, None))
                current = None
                _empty(finish.out)
            if not pending:
                return
            current = await _hand_out(store, pending.popleft(), pfs, cache, control)
            continue
        if exited in done:
            code = process.returncode
            if current is None:
                await finish.unasked(pending.popleft(), code)
            else:
                await finish.datum(current, _exit_outcome(current[0], code))
            return
        assert current is not None
        await _kill_and_reap(process)
        error = f"command timed out after {current[0].datum_timeout:g} s"
        await finish.datum(current, _Outcome("FAILED", None, error))
        return


def _exit_outcome(task: DatumTask, code: int | None) -> _Outcome:
    """How the current datum ends when the command exits by itself."""
    if code == 0 or (code is not None and code in task.accept_return_code):
        return _Outcome("SUCCESS", code, None)
    if code is not None and code < 0:
        return _Outcome("FAILED", code, f"command was killed by signal {-code}")
    return _Outcome("FAILED", code, f"command exited with code {code}")


async def _hand_out(
    store: ObjectStore,
    task: DatumTask,
    pfs: Path,
    cache: ChunkCache | None,
    control: _Control,
) -> tuple[DatumTask, _Run, dict[str, MountedInput]]:
    """Place ``task``'s files in the sandbox's inputs and answer the ask."""
    run = _Run(pfs, time.monotonic(), [])
    mounted = mounted_inputs(task.inputs)
    with os.scandir(pfs) as entries:
        inputs = [Path(entry.path) for entry in entries if entry.name != "out"]
    for directory in inputs:
        _empty(directory)
    _, run.download_bytes = await _materialise(store, mounted, pfs, cache, None)
    (control.directory / "datum.env").write_text(_env_file(_datum_env(task)))
    control.answer()
    return task, run, mounted
