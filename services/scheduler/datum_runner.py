"""Running one datum on a worker: materialise its inputs, run the command, store /pfs/out.

1. **Materialise**: each input file is streamed from the chunk store to
   ``<scratch>/pfs/<input name>/<path>`` (``empty_files`` inputs get empty files, as
   in Pachyderm). ``lazy`` inputs are not copied when the worker has a lazy-input
   tree (``lazy_fs.LazyInputs``): their files are registered in it for the datum's
   run and ``<tree>/<datum dir>/<input name>`` is bound read-only at
   ``/pfs/<input name>``, so the command's reads fetch only the chunks they touch.
   Without a tree (no FUSE here, or pod sandboxes) lazy inputs are copied.
2. **Run** the transform's ``cmd`` in the bubblewrap sandbox (``sandbox.Sandbox``)
   with its stdin lines and the datum environment. If it fails and ``err_cmd`` is
   set, ``err_cmd`` runs in the same sandbox; its success makes the datum
   ``RECOVERED`` (its output is discarded, as in Pachyderm).
3. **Collect** ``/pfs/out`` of a successful run: regular files, sorted by path,
   written through one ``PackWriter`` (so many small outputs share chunks) and
   indexed in one ``FileIndex`` tree whose root the result carries. Symlinks and
   other non-regular files are skipped with a line in the logs: a link's target
   means something only inside the sandbox, and following it could read the
   worker's own files. Nothing of a failed, recovered or killed run is stored.
4. The datum's scratch directory is removed whatever happens, cancellation included.

Errors of the environment rather than of the datum (bwrap missing, the object
store down, a chunk missing) raise, so the worker can report them without burning
one of the datum's tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.scheduler.sandbox import Sandbox, SandboxRun
from services.scheduler.tasks import DatumResult, DatumState, DatumTask, DatumTaskInput
from shared.chunking import ChunkCache, FileEntry, PackWriter, read_range
from shared.errors import InvalidArgument
from shared.file_entries import to_index_entry
from shared.file_index import FileIndex
from shared.objstore import ObjectStore

if TYPE_CHECKING:
    # Only a type here: importing lazy_fs needs pyfuse3, which a worker may lack.
    from services.scheduler.lazy_fs import LazyDatum, LazyInputs

# Reads and writes at least this big leave the event loop for a thread.
_THREAD_IO_MIN = 256 << 10
_READ_BLOCK = 1 << 20
# Files of one datum fetched at once: enough to overlap object-store latency.
_MATERIALISE_CONCURRENCY = 8
# Scratch trees of at most this many files are removed on the event loop.
_SMALL_TREE = 64
# Lines about skipped outputs (symlinks, devices, bad names) kept in the logs.
_SKIPS_LOGGED = 20


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: DatumState
    exit_code: int | None
    error: str | None


async def run_datum(
    store: ObjectStore,
    task: DatumTask,
    *,
    workdir: Path,
    cache: ChunkCache | None = None,
    sandbox: Sandbox | None = None,
    index: FileIndex | None = None,
    lazy: LazyInputs | None = None,
) -> DatumResult:
    """Run one datum and return its result; on success its ``/pfs/out`` is stored.

    ``workdir`` is the worker's scratch directory: the datum works in a fresh
    directory under it, removed at the end. ``cache`` shares input chunks between
    datums; ``index`` (a ``FileIndex`` over ``store``) is reused across datums when
    given, which saves its set-up per datum. ``lazy`` is the worker's lazy-input tree:
    with it, ``lazy`` inputs are served from the chunk store instead of copied.
    """
    started = time.monotonic()
    sandbox = sandbox if sandbox is not None else Sandbox()
    _check_inputs(task.inputs)
    scratch = Path(tempfile.mkdtemp(prefix="datum-", dir=workdir))
    small = False
    try:
        pfs = scratch / "pfs"
        out = pfs / "out"
        out.mkdir(parents=True)
        logs: list[str] = []
        with _serve_lazy(lazy, task.inputs) as served:
            directory = lazy.path(served) if lazy is not None and served is not None else None
            inputs, download_bytes = await _materialise(store, task.inputs, pfs, cache, directory)
            outcome = await _run_command(sandbox, task, inputs, out, logs)
            # Lazy bytes count as downloaded when the command reads them.
            download_bytes += served.bytes_read if served is not None else 0
        root, files, size, upload = None, 0, 0, 0
        if outcome.state == "SUCCESS":
            root, files, size, upload = await _collect_output(store, out, logs, index)
            small = files + sum(len(item.files) for item in task.inputs) <= _SMALL_TREE
        return DatumResult(
            state=outcome.state,
            output_root=root,
            output_files=files,
            output_bytes=size,
            exit_code=outcome.exit_code,
            error=outcome.error,
            logs="".join(logs),
            seconds=time.monotonic() - started,
            download_bytes=download_bytes,
            upload_bytes=upload,
        )
    finally:
        await _remove_tree(scratch, small=small)


async def _run_command(
    sandbox: Sandbox, task: DatumTask, inputs: Mapping[str, Path], out: Path, logs: list[str]
) -> _Outcome:
    """Run ``cmd``, and ``err_cmd`` if it failed; their logs go to ``logs``."""
    env = sandbox.environment(_datum_env(task))
    first = await sandbox.run(
        sandbox.argv(task.cmd, inputs=inputs, out=out), task.stdin, env, task.datum_timeout
    )
    logs.append(first.logs)
    outcome = _outcome(first, task.datum_timeout)
    if outcome.state == "FAILED" and task.err_cmd:
        logs.append(f"\n[tusk] {outcome.error}; running err_cmd\n")
        recovery = await sandbox.run(
            sandbox.argv(task.err_cmd, inputs=inputs, out=out),
            task.err_stdin,
            env,
            task.datum_timeout,
        )
        logs.append(recovery.logs)
        outcome = _recovery_outcome(outcome, recovery, task.datum_timeout)
    return outcome


async def _remove_tree(path: Path, *, small: bool) -> None:
    if small:
        # A few files go faster than a hop to a thread and back, a large share of a tiny datum.
        shutil.rmtree(path, ignore_errors=True)
        return
    # Shielded so a second cancel cannot leave the datum's files behind.
    await asyncio.shield(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True))


# -- materialise ------------------------------------------------------------------------


def _check_inputs(inputs: Sequence[DatumTaskInput]) -> None:
    seen: set[str] = set()
    for item in inputs:
        name = item.name
        if not name or name in (".", "..", "out") or "/" in name or "\0" in name:
            raise InvalidArgument(f"input name {name!r} cannot be mounted at /pfs/{name}")
        if name in seen:
            raise InvalidArgument(f"two inputs of the datum are named {name!r}")
        seen.add(name)


def _relative(path: str) -> str:
    """A repo path as a relative path that cannot leave its input's directory."""
    parts = path.strip("/").split("/")
    if not parts or any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise InvalidArgument(f"input file path {path!r} is not a clean absolute path")
    return "/".join(parts)


def _served_lazily(item: DatumTaskInput) -> bool:
    # empty_files shows names only: empty files on disk cost less than a mount.
    return item.lazy and not item.empty_files


@contextlib.contextmanager
def _serve_lazy(
    lazy: LazyInputs | None, inputs: Sequence[DatumTaskInput]
) -> Iterator[LazyDatum | None]:
    """The datum's directory in the lazy-input tree for the block, holding its lazy
    inputs (``None`` when there is no tree or no lazy input); removed after."""
    chosen = [item for item in inputs if _served_lazily(item)]
    if lazy is None or not chosen:
        yield None
        return
    files = {
        item.name: [(_relative(file.path), file.entry) for file in item.files] for item in chosen
    }
    with lazy.datum(files) as directory:
        yield directory


async def _materialise(
    store: ObjectStore,
    inputs: Sequence[DatumTaskInput],
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
    for item in inputs:
        if served is not None and _served_lazily(item):
            places[item.name] = served / item.name
            continue
        root = places[item.name] = pfs / item.name
        root.mkdir()
        for file in item.files:
            target = root / _relative(file.path)
            jobs.append((target, None if item.empty_files else file.entry))
    directories = {target.parent for target, _ in jobs}
    for directory in sorted(directories):
        directory.mkdir(parents=True, exist_ok=True)
    if not jobs:
        return places, 0
    if len(jobs) == 1:
        target, entry = jobs[0]
        return places, await _write_file(store, target, entry, cache)
    limit = asyncio.Semaphore(_MATERIALISE_CONCURRENCY)

    async def bounded(target: Path, entry: FileEntry | None) -> int:
        async with limit:
            return await _write_file(store, target, entry, cache)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(bounded(target, entry)) for target, entry in jobs]
    return places, sum(done.result() for done in tasks)


async def _write_file(
    store: ObjectStore, target: Path, entry: FileEntry | None, cache: ChunkCache | None
) -> int:
    """Stream one file from the chunk store to ``target`` (empty for ``None``)."""
    # "x": two entries for one path would be a planner bug; do not let one hide the other.
    with target.open("xb") as file:
        if entry is None or entry.size == 0:
            return 0
        async for piece in read_range(store, entry, cache=cache):
            if len(piece) >= _THREAD_IO_MIN:
                await asyncio.to_thread(file.write, piece)
            else:
                file.write(piece)
    return entry.size


def _datum_env(task: DatumTask) -> dict[str, str]:
    """The variables Pachyderm gives a datum, then the spec's own ``env``."""
    env: dict[str, str] = {}
    for item in task.inputs:
        match = item.match.rstrip("/")
        env[item.name] = f"/pfs/{item.name}{match}"
        env[f"{item.name}_COMMIT"] = item.commit
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


def _failure(run: SandboxRun, timeout: float | None, what: str) -> str | None:
    if run.timed_out:
        return f"{what} timed out after {timeout:g} s"
    if run.exit_code == 0:
        return None
    if run.exit_code is not None and run.exit_code < 0:
        return f"{what} was killed by signal {-run.exit_code}"
    return f"{what} exited with code {run.exit_code}"


def _outcome(run: SandboxRun, timeout: float | None) -> _Outcome:
    error = _failure(run, timeout, "command")
    return _Outcome("FAILED" if error else "SUCCESS", run.exit_code, error)


def _recovery_outcome(failed: _Outcome, run: SandboxRun, timeout: float | None) -> _Outcome:
    error = _failure(run, timeout, "err_cmd")
    if error is None:
        return _Outcome("RECOVERED", failed.exit_code, f"{failed.error} (recovered by err_cmd)")
    return _Outcome("FAILED", failed.exit_code, f"{failed.error}; {error}")


# -- collect ----------------------------------------------------------------------------


def _output_files(out: Path, logs: list[str]) -> list[tuple[str, Path, int]]:
    """(index path, host path, size) of the regular files under ``out``, sorted by path."""
    found: list[tuple[str, Path, int]] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(out):
        directory = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = directory / name
            info = path.lstat()
            relative = "/" + path.relative_to(out).as_posix()
            if not _is_utf8(relative):
                shown = os.fsencode(relative).decode("utf-8", "backslashreplace")
                skipped.append((relative, f"/pfs/out{shown}: its name is not UTF-8"))
                dirnames[:] = [d for d in dirnames if d != name]
            elif stat.S_ISREG(info.st_mode):
                found.append((relative, path, info.st_size))
            elif stat.S_ISLNK(info.st_mode):
                skipped.append((relative, f"symlink /pfs/out{relative}: outputs are regular files"))
            elif not stat.S_ISDIR(info.st_mode):
                skipped.append((relative, f"/pfs/out{relative}: not a regular file"))
    skipped.sort()
    for _, line in skipped[:_SKIPS_LOGGED]:
        logs.append(f"[tusk] skipped {line}\n")
    if len(skipped) > _SKIPS_LOGGED:
        logs.append(f"[tusk] skipped {len(skipped) - _SKIPS_LOGGED} more entries of /pfs/out\n")
    # Index order is str order of whole paths ("/a.txt" < "/a/b"), not walk order.
    found.sort()
    return found


def _is_utf8(path: str) -> bool:
    # os.walk returns undecodable bytes as surrogates; index keys must be UTF-8.
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _collect_output(
    store: ObjectStore, out: Path, logs: list[str], index: FileIndex | None
) -> tuple[str | None, int, int, int]:
    """Store ``out``'s files; return (index root, file count, bytes, bytes uploaded)."""
    files = await asyncio.to_thread(_output_files, out, logs)
    if not files:
        return None, 0, 0, 0
    async with PackWriter(store) as writer:
        for _, path, size in files:
            writer.start_file()
            with path.open("rb") as source:
                if size < _THREAD_IO_MIN:
                    # Read what is there, not what stat said: the file is ours now.
                    await writer.write(source.read())
                else:
                    while block := await asyncio.to_thread(source.read, _READ_BLOCK):
                        await writer.write(block)
            writer.end_file()
        entries = await writer.close()
    index = index if index is not None else FileIndex(store)
    root = await index.build(
        to_index_entry(key, entry) for (key, _, _), entry in zip(files, entries, strict=True)
    )
    total = sum(entry.size for entry in entries)
    return root, len(files), total, writer.bytes_written


__all__ = ["run_datum"]
