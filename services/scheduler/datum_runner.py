"""Running one datum on a worker: materialise its inputs, run the command, store /pfs/out.

1. **Materialise**: the datum's parts are gathered by input name: a datum may hold
   any number of parts of one input (a ``group`` gathers every match of a key, a
   ``join`` or a ``cross`` may combine an input's matches), and all their files appear
   together at ``/pfs/<input name>/<path>``. The same path in two parts must be the
   same entry (it is then placed once); two different entries for one path are a
   planner bug and fail the datum. Each file is streamed from the chunk store to
   ``<scratch>/pfs/<input name>/<path>`` (``empty_files`` inputs get empty files, as
   in Pachyderm). ``lazy`` inputs are not copied when the worker has a lazy-input
   tree (``lazy_fs.LazyInputs``): their files are registered in it for the datum's
   run and ``<tree>/<datum dir>/<input name>`` is bound read-only at
   ``/pfs/<input name>``, so the command's reads fetch only the chunks they touch.
   Without a tree (no FUSE here, or pod sandboxes) lazy inputs are copied.
2. **Run** the transform's ``cmd`` in the bubblewrap sandbox (``sandbox.Sandbox``)
   with its stdin lines and the datum environment (Pachyderm's variables, see
   ``_datum_env``), in ``working_dir`` (default ``/pfs``), as ``user`` when given,
   with the transform's ``secrets`` as variables or read-only files
   (``datum_secrets``). Exit 0 or a code in ``accept_return_code`` is success. If it
   fails and ``err_cmd`` is set, ``err_cmd`` runs in the same sandbox; its success
   makes the datum ``RECOVERED`` (its output is discarded, as in Pachyderm). A
   sandbox that cannot start fails the datum with bwrap's reason.
3. **Collect** ``/pfs/out`` of a successful run (``datum_output``): regular files are
   stored with their bytes through one ``PackWriter``; symlinks are resolved in the
   sandbox's view, never on the host: one to a file or directory of an input is
   stored *by reference* (the input's own file entries: no byte copied or
   uploaded), one to a path inside ``/pfs/out`` as its target's content. A symlink
   leading anywhere else (``/etc/passwd``, outside paths, a loop, a dangling link), a
   FIFO, socket or device, and a name PFS refuses fail the datum with one line naming
   the path. Everything is indexed in one ``FileIndex`` tree whose root the result
   carries. Nothing of a failed, recovered or killed run is stored.
4. The datum's scratch directory is removed whatever happens, cancellation included.

Faults of the datum (a bad input name, conflicting entries, a missing secret or
chunk, a bad output) end it ``FAILED`` with a one-line ``error``. Errors of the
environment rather than of the datum (bwrap missing: ``FailedPrecondition``; the
object store or PPS down: ``Unavailable``) raise, so the worker can retry later
without burning one of the datum's tries. Secret values never reach the result: the
logs are masked (``datum_secrets.mask``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from services.scheduler.datum_output import (
    NOTHING_STORED,
    MountedInput,
    Stored,
    gather_output,
    store_output,
)
from services.scheduler.datum_secrets import (
    SecretValues,
    mask,
    secret_env,
    used_values,
    write_secret_mounts,
)
from services.scheduler.sandbox import Sandbox, SandboxRun, SandboxSettings
from services.scheduler.tasks import (
    DatumResult,
    DatumState,
    DatumTask,
    DatumTaskInput,
)
from shared.platform.errors import InvalidArgument, NotFound
from shared.storage.chunking import ChunkCache, FileEntry, read_range
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore

if TYPE_CHECKING:
    # Only a type here: importing lazy_fs needs pyfuse3, which a worker may lack.
    from services.scheduler.lazy_fs import LazyDatum, LazyInputs

# Writes at least this big leave the event loop for a thread.
_THREAD_IO_MIN = 256 << 10
# Files of one datum fetched at once: enough to overlap object-store latency.
_MATERIALISE_CONCURRENCY = 8
# Scratch trees of at most this many files are removed on the event loop.
_SMALL_TREE = 64
# Lines about outputs that cannot be stored kept in the logs.
_PROBLEMS_LOGGED = 20
DEFAULT_WORKING_DIR = "/pfs"


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: DatumState
    exit_code: int | None
    error: str | None


@dataclass(slots=True)
class _Run:
    """One datum's run as it goes: its scratch directory, logs and counters."""

    scratch: Path
    started: float
    logs: list[str]
    download_bytes: int = 0
    small: bool = False

    def result(self, outcome: _Outcome, stored: Stored = NOTHING_STORED) -> DatumResult:
        return DatumResult(
            state=outcome.state,
            output_root=stored.root,
            output_files=stored.files,
            output_bytes=stored.size,
            exit_code=outcome.exit_code,
            error=outcome.error,
            logs="".join(self.logs),
            seconds=time.monotonic() - self.started,
            download_bytes=self.download_bytes,
            upload_bytes=stored.upload,
        )


async def run_datum(
    store: ObjectStore,
    task: DatumTask,
    *,
    workdir: Path,
    cache: ChunkCache | None = None,
    sandbox: Sandbox | None = None,
    index: FileIndex | None = None,
    lazy: LazyInputs | None = None,
    secrets: SecretValues | None = None,
    reaper: ScratchReaper | None = None,
) -> DatumResult:
    """Run one datum and return its result; on success its ``/pfs/out`` is stored.

    ``workdir`` is the worker's scratch directory: the datum works in a fresh
    directory under it, removed at the end. ``cache`` shares input chunks between
    datums; ``index`` (a ``FileIndex`` over ``store``) is reused across datums when
    given, which saves its set-up per datum. ``lazy`` is the worker's lazy-input tree:
    with it, ``lazy`` inputs are served from the chunk store instead of copied.
    ``secrets`` holds the data of the secrets ``task.secrets`` names. With a ``reaper``
    the scratch directory is handed to it instead of being removed before returning.
    """
    run = _Run(Path(tempfile.mkdtemp(prefix="datum-", dir=workdir)), time.monotonic(), [])
    values = secrets or {}
    try:
        try:
            result = await _run(store, task, run, cache, sandbox or Sandbox(), index, lazy, values)
        except (InvalidArgument, NotFound) as exc:
            # The datum's own fault (or its data's): this datum fails, the worker goes on.
            run.logs.append(f"[tusk] {exc.message}\n")
            result = run.result(_Outcome("FAILED", None, exc.message))
        if task.secrets:
            hidden = used_values(task.secrets, values)
            error = mask(result.error, hidden) if result.error else None
            result = replace(result, logs=mask(result.logs, hidden), error=error)
        return result
    finally:
        if reaper is None or not reaper.discard(run.scratch):
            await _remove_tree(run.scratch, small=run.small)


async def _run(
    store: ObjectStore,
    task: DatumTask,
    run: _Run,
    cache: ChunkCache | None,
    sandbox: Sandbox,
    index: FileIndex | None,
    lazy: LazyInputs | None,
    secrets: SecretValues,
) -> DatumResult:
    mounted = mounted_inputs(task.inputs)
    pfs = run.scratch / "pfs"
    out = pfs / "out"
    out.mkdir(parents=True)
    settings = _settings(task, sandbox, secrets, run.scratch / "secrets")
    env = {**_datum_env(task), **secret_env(task.secrets, secrets)}
    with _serve_lazy(lazy, mounted) as served:
        directory = lazy.path(served) if lazy is not None and served is not None else None
        places, run.download_bytes = await _materialise(store, mounted, pfs, cache, directory)
        outcome = await _run_command(sandbox, task, places, out, settings, env, run.logs)
        # Lazy bytes count as downloaded when the command reads them.
        run.download_bytes += served.bytes_read if served is not None else 0
    if outcome.state != "SUCCESS":
        return run.result(outcome)
    return await _collect(store, out, mounted, index, run, outcome)


async def _collect(
    store: ObjectStore,
    out: Path,
    mounted: Mapping[str, MountedInput],
    index: FileIndex | None,
    run: _Run,
    outcome: _Outcome,
) -> DatumResult:
    """Store ``/pfs/out`` of a successful run, or fail the datum naming what in it cannot
    be stored (nothing is stored then)."""
    gathered = await asyncio.to_thread(gather_output, out, mounted)
    run.small = len(gathered.files) + sum(len(m.files) for m in mounted.values()) <= _SMALL_TREE
    if not gathered.problems:
        return run.result(outcome, await store_output(store, gathered.files, index))
    for problem in gathered.problems[:_PROBLEMS_LOGGED]:
        run.logs.append(f"[tusk] cannot store {problem.line}\n")
    if len(gathered.problems) > _PROBLEMS_LOGGED:
        more = len(gathered.problems) - _PROBLEMS_LOGGED
        run.logs.append(f"[tusk] ... and {more} more entries of /pfs/out\n")
    return run.result(_Outcome("FAILED", outcome.exit_code, gathered.problems[0].line))


def _settings(
    task: DatumTask, sandbox: Sandbox, secrets: SecretValues, directory: Path
) -> SandboxSettings:
    working_dir = task.working_dir or sandbox.default_working_dir
    if not working_dir.startswith("/"):
        raise InvalidArgument(f"working_dir {working_dir!r} must be an absolute path")
    return SandboxSettings(
        working_dir=working_dir,
        user=sandbox.identity(task.user),
        mounts=write_secret_mounts(task.secrets, secrets, directory),
    )


async def _run_command(
    sandbox: Sandbox,
    task: DatumTask,
    inputs: Mapping[str, Path],
    out: Path,
    settings: SandboxSettings,
    variables: Mapping[str, str],
    logs: list[str],
) -> _Outcome:
    """Run ``cmd``, and ``err_cmd`` if it failed; their logs go to ``logs``."""
    env = sandbox.environment(variables)
    first = await sandbox.run(
        sandbox.argv(task.cmd, inputs=inputs, out=out, settings=settings),
        task.stdin,
        env,
        task.datum_timeout,
    )
    logs.append(first.logs)
    outcome = _outcome(first, task)
    if outcome.state == "FAILED" and task.err_cmd and first.setup_error is None:
        logs.append(f"\n[tusk] {outcome.error}; running err_cmd\n")
        recovery = await sandbox.run(
            sandbox.argv(task.err_cmd, inputs=inputs, out=out, settings=settings),
            task.err_stdin,
            env,
            task.datum_timeout,
        )
        logs.append(recovery.logs)
        outcome = _recovery_outcome(outcome, recovery, task)
    return outcome


async def _remove_tree(path: Path, *, small: bool) -> None:
    if small:
        # A few files go faster than a hop to a thread and back, a large share of a tiny datum.
        _remove_now(path)
        return
    # Shielded so a second cancel cannot leave the datum's files behind.
    await asyncio.shield(asyncio.to_thread(_remove_now, path))


class ScratchReaper:
    """Removes datums' scratch directories off the datums' path.

    ``discard`` moves a tree into the reaper's trash with one rename, so the datum is done
    with it at once; ``run`` (a task its owner keeps) empties the trash in a thread. The
    removal was ~14% of a worker's event loop over tiny datums (one rmdir or unlink per
    entry, each a journal transaction of the disk's filesystem) and held the next datum
    back; in a thread it overlaps the sandboxes instead. The trash lives in the worker's
    scratch directory, so whatever is left of it at exit goes with that directory.
    """

    def __init__(self, workdir: Path) -> None:
        self.trash = workdir / ".trash"
        self.trash.mkdir(exist_ok=True)
        self._pending = asyncio.Event()

    def discard(self, path: Path) -> bool:
        """Move ``path`` into the trash; False if it could not be (remove it yourself)."""
        try:
            os.rename(path, self.trash / path.name)
        except OSError:
            return False
        self._pending.set()
        return True

    async def run(self) -> None:
        """Empty the trash whenever something is discarded, until cancelled."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            await asyncio.to_thread(self._empty)

    def _empty(self) -> None:
        with os.scandir(self.trash) as entries:
            names = [entry.path for entry in entries]
        for name in names:
            _remove_now(Path(name))


def _remove_now(path: Path) -> None:
    """Remove a datum's scratch tree, however deep its command made it."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except (RecursionError, OSError):
        # Deeper than Python's recursion limit or than PATH_MAX: rm walks any depth.
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, check=False
        )


# -- materialise ------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or name in (".", "..", "out") or "/" in name or "\0" in name:
        raise InvalidArgument(f"input name {name!r} cannot be mounted at /pfs/{name}")


def _relative(path: str) -> str:
    """A repo path as a relative path that cannot leave its input's directory."""
    parts = path.strip("/").split("/")
    if not parts or any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise InvalidArgument(f"input file path {path!r} is not a clean absolute path")
    return "/".join(parts)


def mounted_inputs(parts: Sequence[DatumTaskInput]) -> dict[str, MountedInput]:
    """The datum's parts gathered by input name, as the command sees each at
    ``/pfs/<name>``; refuses names that cannot be mounted and paths that disagree."""
    files: dict[str, dict[str, FileEntry]] = {}
    first: dict[str, DatumTaskInput] = {}
    for part in parts:
        _check_name(part.name)
        seen = first.setdefault(part.name, part)
        if (seen.lazy, seen.empty_files) != (part.lazy, part.empty_files):
            raise InvalidArgument(
                f"parts of input {part.name!r} disagree on lazy/empty_files (a planner bug)"
            )
        placed = files.setdefault(part.name, {})
        for file in part.files:
            relative = _relative(file.path)
            if placed.setdefault(relative, file.entry) != file.entry:
                raise InvalidArgument(
                    f"/pfs/{part.name}/{relative} has two different entries in this datum "
                    "(a planner bug)"
                )
    for name, placed in files.items():
        _check_tree(name, placed)
    return {
        name: MountedInput(name, dict(sorted(placed.items())), part.lazy, part.empty_files)
        for (name, placed), part in zip(files.items(), first.values(), strict=True)
    }


def _check_tree(name: str, files: Mapping[str, FileEntry]) -> None:
    """Refuse a path that is a file in one part and a directory in another."""
    directories = {path[:at] for path in files for at, c in enumerate(path) if c == "/"}
    clash = sorted(directories.intersection(files))
    if clash:
        raise InvalidArgument(
            f"/pfs/{name}/{clash[0]} is both a file and a directory in this datum (a planner bug)"
        )


def _served_lazily(item: MountedInput) -> bool:
    # empty_files shows names only: empty files on disk cost less than a mount.
    return item.lazy and not item.empty_files


@contextlib.contextmanager
def _serve_lazy(
    lazy: LazyInputs | None, mounted: Mapping[str, MountedInput]
) -> Iterator[LazyDatum | None]:
    """The datum's directory in the lazy-input tree for the block, holding its lazy
    inputs (``None`` when there is no tree or no lazy input); removed after."""
    chosen = [item for item in mounted.values() if _served_lazily(item)]
    if lazy is None or not chosen:
        yield None
        return
    files = {item.name: list(item.files.items()) for item in chosen}
    with lazy.datum(files) as directory:
        yield directory


async def _materialise(
    store: ObjectStore,
    mounted: Mapping[str, MountedInput],
    pfs: Path,
    cache: ChunkCache | None,
    served: Path | None,
) -> tuple[dict[str, Path], int]:
    """Place every input; return (input name → host directory to bind, bytes downloaded).

    Inputs in ``served`` (the datum's directory in the lazy-input tree) are bound from
    there and nothing of them is downloaded now; the others are written under
    ``pfs/<name>``.
    """
    places: dict[str, Path] = {}
    jobs: list[tuple[Path, FileEntry | None]] = []
    for item in mounted.values():
        if served is not None and _served_lazily(item):
            places[item.name] = served / item.name
            continue
        root = places[item.name] = pfs / item.name
        # Already there for a batch's next datum (datum_batch: the sandbox binds it).
        root.mkdir(exist_ok=True)
        jobs.extend(
            (root / relative, None if item.empty_files else entry)
            for relative, entry in item.files.items()
        )
    directories = {target.parent for target, _ in jobs}
    for directory in sorted(directories):
        directory.mkdir(parents=True, exist_ok=True)
    if not jobs:
        return places, 0
    if len(jobs) == 1:
        target, entry = jobs[0]
        return places, await _write_file(store, target, entry, cache, pfs)
    limit = asyncio.Semaphore(_MATERIALISE_CONCURRENCY)

    async def bounded(target: Path, entry: FileEntry | None) -> int:
        async with limit:
            return await _write_file(store, target, entry, cache, pfs)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(target, entry)) for target, entry in jobs]
    except ExceptionGroup as failed:
        # The first file's own error is the datum's reason; the group would hide it.
        raise _first_error(failed) from None
    return places, sum(done.result() for done in tasks)


def _first_error(group: ExceptionGroup[Exception]) -> Exception:
    first: Exception = group.exceptions[0]
    while isinstance(first, ExceptionGroup):
        first = first.exceptions[0]
    return first


async def _write_file(
    store: ObjectStore,
    target: Path,
    entry: FileEntry | None,
    cache: ChunkCache | None,
    pfs: Path,
) -> int:
    """Stream one file from the chunk store to ``target`` (empty for ``None``)."""
    # "x": each path is placed once (mounted_inputs merged the parts).
    with target.open("xb") as file:
        if entry is None or entry.size == 0:
            return 0
        shown = f"/pfs/{target.relative_to(pfs).as_posix()}"  # as the command sees it
        async for piece in read_range(store, entry, cache=cache, path=shown):
            if len(piece) >= _THREAD_IO_MIN:
                await asyncio.to_thread(file.write, piece)
            else:
                file.write(piece)
    return entry.size


def _datum_env(task: DatumTask) -> dict[str, str]:
    """The variables Pachyderm gives a datum, then the spec's own ``env``.

    Per input: ``<name>`` (the match's path under ``/pfs/<name>``), ``<name>_COMMIT``,
    and ``PACH_DATUM_<name>_JOIN_ON`` / ``PACH_DATUM_<name>_GROUP_BY`` when the input
    is joined or grouped. Pachyderm's worker sets them once per part, so with several
    parts of one input (a group) the last part's values stand; so do they here.
    """
    env: dict[str, str] = {}
    for item in task.inputs:
        match = item.match.rstrip("/")
        env[item.name] = f"/pfs/{item.name}{match}"
        env[f"{item.name}_COMMIT"] = item.commit
        if item.join_on is not None:
            env[f"PACH_DATUM_{item.name}_JOIN_ON"] = item.join_on
        if item.group_by is not None:
            env[f"PACH_DATUM_{item.name}_GROUP_BY"] = item.group_by
    env.update(
        PACH_JOB_ID=task.job_id,
        PACH_DATUM_ID=task.datum_id,
        PACH_OUTPUT_COMMIT_ID=task.output_commit,
        TUSK_JOB_ID=task.job_id,
        TUSK_DATUM_ID=task.datum_id,
        TUSK_PIPELINE=task.pipeline,
        TUSK_DATUM_ATTEMPT=str(task.attempt),
    )
    env.update(task.env)
    return env


# -- outcome ----------------------------------------------------------------------------


def _failure(run: SandboxRun, task: DatumTask, what: str) -> str | None:
    if run.setup_error is not None:
        return f"the sandbox could not start: {run.setup_error}"
    if run.timed_out:
        return f"{what} timed out after {task.datum_timeout:g} s"
    if run.exit_code == 0 or run.exit_code in task.accept_return_code:
        return None
    if run.exit_code is not None and run.exit_code < 0:
        return f"{what} was killed by signal {-run.exit_code}"
    return f"{what} exited with code {run.exit_code}"


def _outcome(run: SandboxRun, task: DatumTask) -> _Outcome:
    error = _failure(run, task, "command")
    return _Outcome("FAILED" if error else "SUCCESS", run.exit_code, error)


def _recovery_outcome(failed: _Outcome, run: SandboxRun, task: DatumTask) -> _Outcome:
    error = _failure(run, task, "err_cmd")
    if error is None:
        return _Outcome("RECOVERED", failed.exit_code, f"{failed.error} (recovered by err_cmd)")
    return _Outcome("FAILED", failed.exit_code, f"{failed.error}; {error}")


__all__ = ["DEFAULT_WORKING_DIR", "ScratchReaper", "mounted_inputs", "run_datum"]
