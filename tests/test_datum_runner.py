"""Running a datum: inputs materialised, the command sandboxed, /pfs/out stored (or not)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from services.scheduler.datum_runner import run_datum
from services.scheduler.sandbox import Sandbox
from services.scheduler.tasks import (
    DatumResult,
    DatumTask,
    DatumTaskFile,
    DatumTaskInput,
)
from shared.pipeline.spec import SecretUse
from shared.platform.errors import InvalidArgument
from shared.storage.chunking import ChunkCache, FileEntry, read_all, write_files
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore
from shared.storage.objstore.local import LocalStore
from tests.fixtures.counting_store import CountingStore

# A missing bubblewrap fails these tests (tests/fixtures/parts.py), never skips them.
needs_bwrap = pytest.mark.usefixtures("bubblewrap")


async def make_input(
    store: ObjectStore,
    files: dict[str, bytes],
    *,
    name: str = "in",
    match: str = "/",
    empty_files: bool = False,
) -> DatumTaskInput:
    entries = await write_files(store, list(files.values()))
    return DatumTaskInput(
        name=name,
        repo=f"{name}-repo",
        branch="master",
        commit=f"{name}-commit-1",
        match=match,
        files=tuple(
            DatumTaskFile(name, path, entry) for path, entry in zip(files, entries, strict=True)
        ),
        empty_files=empty_files,
    )


def make_task(inputs: list[DatumTaskInput], script: str, **fields: object) -> DatumTask:
    task = DatumTask(
        pipeline="edges",
        job_id="job-1",
        datum_id="datum-1",
        attempt=1,
        inputs=tuple(inputs),
        cmd=("sh", "-c", script),
        output_commit="out-commit-1",
    )
    return replace(task, **fields)  # type: ignore[arg-type]


def leftovers(workdir: Path) -> list[Path]:
    """What a datum left in the worker's scratch directory."""
    return list(workdir.iterdir())


def materialised(workdir: Path, path: str) -> bool:
    return any(workdir.glob(f"*/pfs/{path}"))


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (sandboxes, commands):
    the work done, which a loaded machine's waits for a core do not add to."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def bare_cp_ms(directory: Path, count: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per ``sh -c cp`` of one tiny file, with no sandbox and no store."""
    started, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(count):
        subprocess.run(["sh", "-c", "cp in/* out/"], cwd=directory, check=True)
    return (
        (time.perf_counter() - started) * 1000 / count,
        (cpu_seconds() - cpu) * 1000 / count,
    )


async def output_files(store: CountingStore, result: DatumResult) -> dict[str, bytes]:
    """The stored output, read back from the file index and the chunk store."""
    index = FileIndex(store)
    return {
        item.key: await read_all(store, from_index_entry(item))
        async for item in index.scan(result.output_root)
    }


# -- records ----------------------------------------------------------------------------


def test_task_and_result_round_trip_through_json() -> None:
    entry = FileEntry(0, "e" * 64, ())
    task = DatumTask(
        pipeline="p",
        job_id="j",
        datum_id="d",
        attempt=2,
        inputs=(DatumTaskInput("in", "r", "b", "c", "/x", (DatumTaskFile("in", "/x", entry),)),),
        cmd=("python3", "run.py"),
        stdin=("a",),
        env={"K": "V"},
        err_cmd=("true",),
        err_stdin=("b",),
        datum_timeout=1.5,
        output_commit="o",
        accept_return_code=(1, 3),
        working_dir="/pfs/in",
        user="1000:1000",
        secrets=(
            SecretUse("creds", key="token", env_var="TOKEN"),
            SecretUse("tls", mount_path="/s"),
        ),
    )
    assert DatumTask.from_json(task.to_json()) == task
    keyed = DatumTaskInput("in", "r", "b", "c", "/x", (), join_on="7", group_by=None)
    assert DatumTaskInput.from_json(keyed.to_json()) == keyed
    result = DatumResult("FAILED", None, 0, 0, 3, "command exited with code 3", "log", 0.1, 1, 0)
    assert DatumResult.from_json(result.to_json()) == result


def test_task_of_an_older_scheduler_without_the_new_fields_still_parses() -> None:
    old = make_task([], "true").to_json()
    for name in ("accept_return_code", "working_dir", "user", "secrets"):
        del old[name]
    assert DatumTask.from_json(old) == make_task([], "true")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attempt": "1"}, "field 'attempt' must be int"),
        ({"cmd": ["sh", 1]}, "field 'cmd' must be a list of strings"),
        ({"env": {"K": 1}}, "field 'env' must map strings to strings"),
        ({"inputs": [{"name": "in"}]}, "missing field 'repo'"),
        ({"accept_return_code": [1, "2"]}, "field 'accept_return_code' must be a list of integers"),
        ({"secrets": [{"key": "k"}]}, "missing field 'name'"),
    ],
)
def test_malformed_task_is_refused_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    good = make_task([], "true").to_json()
    with pytest.raises(InvalidArgument, match=message):
        DatumTask.from_json({**good, **change})


# -- running ----------------------------------------------------------------------------


@needs_bwrap
async def test_success_stores_nested_output_that_reads_back(
    store: CountingStore, workdir: Path
) -> None:
    source = await make_input(store, {"/img/cat.png": b"CAT" * 1000, "/img/dog.png": b"DOG"})
    script = (
        "mkdir -p /pfs/out/deep/er && "
        "cat /pfs/in/img/cat.png > /pfs/out/deep/er/cat.copy && "
        "cp /pfs/in/img/dog.png /pfs/out/dog.png && printf '' > /pfs/out/empty && "
        "echo new > /pfs/out/new && echo done"
    )
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    assert (result.state, result.error, result.exit_code) == ("SUCCESS", None, 0)
    assert result.logs == "done\n"
    assert await output_files(store, result) == {
        "/deep/er/cat.copy": b"CAT" * 1000,
        "/dog.png": b"DOG",
        "/empty": b"",
        "/new": b"new\n",
    }
    assert (result.output_files, result.output_bytes) == (4, 3007)
    assert result.download_bytes == 3003
    assert result.upload_bytes > 0
    assert leftovers(workdir) == []


@needs_bwrap
async def test_output_equal_to_stored_data_uploads_no_new_chunk(
    store: CountingStore, workdir: Path
) -> None:
    source = await make_input(store, {"/a.txt": b"same bytes"})
    store.reset()
    result = await run_datum(
        store, make_task([source], "cp /pfs/in/a.txt /pfs/out/"), workdir=workdir
    )
    assert await output_files(store, result) == {"/a.txt": b"same bytes"}
    assert result.upload_bytes == 0
    assert store.count_puts("chunks/") == 0
    assert leftovers(workdir) == []


@needs_bwrap
async def test_large_files_stream_in_and_out(store: CountingStore, workdir: Path) -> None:
    big = os.urandom(3 << 20) + b"tail"
    source = await make_input(store, {"/big.bin": big})
    script = (
        "cp /pfs/in/big.bin /pfs/out/same.bin && "
        "cat /pfs/in/big.bin /pfs/in/big.bin > /pfs/out/twice.bin"
    )
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    assert await output_files(store, result) == {"/same.bin": big, "/twice.bin": big + big}
    assert result.download_bytes == len(big)


@needs_bwrap
async def test_datum_sees_pachyderm_environment(store: CountingStore, workdir: Path) -> None:
    images = await make_input(store, {"/cat.png": b"c"}, name="images", match="/cat.png")
    labels = await make_input(store, {"/a/l.txt": b"l"}, name="labels", match="/")
    task = make_task([images, labels], "env > /pfs/out/env", env={"MODE": "fast"})
    result = await run_datum(store, task, workdir=workdir)
    env = dict(
        line.split("=", 1) for line in (await output_files(store, result))["/env"].decode().split()
    )
    assert env["images"] == "/pfs/images/cat.png"
    assert env["labels"] == "/pfs/labels"
    assert env["images_COMMIT"] == "images-commit-1"
    assert env["labels_COMMIT"] == "labels-commit-1"
    assert env["PACH_JOB_ID"] == env["TUSK_JOB_ID"] == "job-1"
    assert env["PACH_DATUM_ID"] == env["TUSK_DATUM_ID"] == "datum-1"
    assert env["PACH_OUTPUT_COMMIT_ID"] == "out-commit-1"
    assert env["MODE"] == "fast"
    assert (env["HOME"], env["LANG"]) == ("/tmp", "C.UTF-8")


def env_of(text: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.decode().split())


@needs_bwrap
async def test_parts_of_one_input_share_its_directory_and_its_variables(
    store: CountingStore, workdir: Path
) -> None:
    """A group of two files of one input (Pachyderm's labresults example): one datum with
    two parts named 'labresults', both under /pfs/labresults."""
    first = await make_input(
        store, {"/T1-PATID1-A.txt": b"a"}, name="labresults", match="/T1-PATID1-A.txt"
    )
    second = await make_input(
        store, {"/T2-PATID1-B.txt": b"bb"}, name="labresults", match="/T2-PATID1-B.txt"
    )
    parts = [replace(first, group_by="1"), replace(second, group_by="1")]
    script = "cd /pfs/labresults && ls > /pfs/out/ls && env > /pfs/out/env"
    result = await run_datum(store, make_task(parts, script), workdir=workdir)
    assert (result.state, result.error) == ("SUCCESS", None)
    stored = await output_files(store, result)
    assert stored["/ls"] == b"T1-PATID1-A.txt\nT2-PATID1-B.txt\n"
    env = env_of(stored["/env"])
    # Pachyderm sets the variables once per part: the last part's stand.
    assert env["labresults"] == "/pfs/labresults/T2-PATID1-B.txt"
    assert env["PACH_DATUM_labresults_GROUP_BY"] == "1"
    assert "PACH_DATUM_labresults_JOIN_ON" not in env
    assert result.download_bytes == 3


@needs_bwrap
async def test_joined_inputs_see_their_join_key(store: CountingStore, workdir: Path) -> None:
    left = replace(await make_input(store, {"/1.txt": b"l"}, name="left"), join_on="1")
    right = replace(await make_input(store, {"/1.csv": b"r"}, name="right"), join_on="1")
    result = await run_datum(store, make_task([left, right], "env > /pfs/out/env"), workdir=workdir)
    env = env_of((await output_files(store, result))["/env"])
    assert env["PACH_DATUM_left_JOIN_ON"] == env["PACH_DATUM_right_JOIN_ON"] == "1"


@needs_bwrap
async def test_a_path_in_two_parts_with_one_entry_is_placed_once(
    store: CountingStore, workdir: Path
) -> None:
    """A directory match and a file match under it (glob '/**') bring one file twice."""
    directory = await make_input(store, {"/d/x": b"x", "/d/y": b"y"}, match="/d")
    file = replace(directory, match="/d/x", files=directory.files[:1])
    script = "find /pfs/in -type f | sort > /pfs/out/files"
    result = await run_datum(store, make_task([directory, file], script), workdir=workdir)
    assert (await output_files(store, result))["/files"] == b"/pfs/in/d/x\n/pfs/in/d/y\n"


async def test_two_entries_for_one_path_fail_the_datum(store: CountingStore, workdir: Path) -> None:
    one = await make_input(store, {"/x": b"one"})
    two = await make_input(store, {"/x": b"two"})
    result = await run_datum(store, make_task([one, two], "true"), workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == "/pfs/in/x has two different entries in this datum (a planner bug)"
    assert leftovers(workdir) == []


async def test_a_path_that_is_a_file_in_one_part_and_a_directory_in_another_fails(
    store: CountingStore, workdir: Path
) -> None:
    one = await make_input(store, {"/x": b"one"})
    two = await make_input(store, {"/x/y": b"two"})
    result = await run_datum(store, make_task([one, two], "true"), workdir=workdir)
    assert result.error == "/pfs/in/x is both a file and a directory in this datum (a planner bug)"


@needs_bwrap
async def test_stdin_lines_reach_the_command(store: CountingStore, workdir: Path) -> None:
    task = make_task([], "cat > /pfs/out/stdin", stdin=("echo hi", "exit 0"))
    result = await run_datum(store, task, workdir=workdir)
    assert await output_files(store, result) == {"/stdin": b"echo hi\nexit 0\n"}


@needs_bwrap
async def test_inputs_are_read_only(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/a.txt": b"a"})
    result = await run_datum(store, make_task([source], "echo x > /pfs/in/a.txt"), workdir=workdir)
    assert result.state == "FAILED"
    assert "Read-only file system" in result.logs


@needs_bwrap
async def test_failure_stores_nothing_and_names_the_exit_code(
    store: CountingStore, workdir: Path
) -> None:
    source = await make_input(store, {"/a.txt": b"a"})
    store.reset()
    task = make_task([source], "echo partial > /pfs/out/partial; echo oops >&2; exit 3")
    result = await run_datum(store, task, workdir=workdir)
    assert (result.state, result.exit_code) == ("FAILED", 3)
    assert result.error == "command exited with code 3"
    assert result.logs == "oops\n"
    assert (result.output_root, result.output_files, result.upload_bytes) == (None, 0, 0)
    assert store.count_puts() == 0
    assert leftovers(workdir) == []


@needs_bwrap
async def test_err_cmd_success_recovers_and_discards_its_output(
    store: CountingStore, workdir: Path
) -> None:
    store.reset()
    task = make_task(
        [],
        "exit 2",
        err_cmd=("sh", "-c", "read line; echo $line; echo x > /pfs/out/from-err"),
        err_stdin=("recovering",),
    )
    result = await run_datum(store, task, workdir=workdir)
    assert (result.state, result.exit_code, result.output_root) == ("RECOVERED", 2, None)
    assert result.error == "command exited with code 2 (recovered by err_cmd)"
    assert "recovering\n" in result.logs
    assert store.count_puts() == 0


@needs_bwrap
async def test_err_cmd_failure_fails_the_datum(store: CountingStore, workdir: Path) -> None:
    task = make_task([], "exit 2", err_cmd=("sh", "-c", "exit 5"))
    result = await run_datum(store, task, workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == "command exited with code 2; err_cmd exited with code 5"


@needs_bwrap
async def test_timeout_fails_the_datum_promptly(store: CountingStore, workdir: Path) -> None:
    task = make_task([], "echo started; sleep 60", datum_timeout=0.5)
    started = time.monotonic()
    result = await run_datum(store, task, workdir=workdir)
    assert time.monotonic() - started < 1.5
    assert (result.state, result.exit_code) == ("FAILED", None)
    assert result.error == "command timed out after 0.5 s"
    assert result.logs == "started\n"
    assert leftovers(workdir) == []


@needs_bwrap
async def test_empty_files_input_gives_empty_files(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/a/big.bin": b"x" * 5000, "/b.txt": b"b"}, empty_files=True)
    script = "find /pfs/in -type f | sort | xargs wc -c > /pfs/out/sizes"
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    sizes = (await output_files(store, result))["/sizes"].decode().split()
    assert sizes == ["0", "/pfs/in/a/big.bin", "0", "/pfs/in/b.txt", "0", "total"]
    assert result.download_bytes == 0


@needs_bwrap
async def test_python_command_runs_in_the_sandbox(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/n.txt": b"41"})
    task = replace(
        make_task([source], ""),
        cmd=("python3", "-c", "print(int(open('/pfs/in/n.txt').read()) + 1)"),
    )
    result = await run_datum(store, task, workdir=workdir)
    assert (result.state, result.logs) == ("SUCCESS", "42\n")


@needs_bwrap
async def test_empty_output_has_no_root(store: CountingStore, workdir: Path) -> None:
    result = await run_datum(store, make_task([], "true"), workdir=workdir)
    assert (result.state, result.output_root, result.output_files) == ("SUCCESS", None, 0)


@needs_bwrap
async def test_cancel_cleans_the_workdir_and_reraises(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/a.txt": b"a"})
    running = asyncio.create_task(
        run_datum(store, make_task([source], "sleep 60"), workdir=workdir)
    )
    for _ in range(100):
        await asyncio.sleep(0.02)
        if materialised(workdir, "in/a.txt"):
            break
    await asyncio.sleep(0.1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert leftovers(workdir) == []


@pytest.mark.parametrize("name", ["out", "a/b", ".."])
async def test_input_names_that_cannot_be_mounted_fail_the_datum(
    store: CountingStore, workdir: Path, name: str
) -> None:
    source = replace(await make_input(store, {"/a": b"a"}), name=name)
    result = await run_datum(store, make_task([source], "true"), workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == f"input name {name!r} cannot be mounted at /pfs/{name}"
    assert leftovers(workdir) == []


async def test_input_paths_cannot_escape_their_input(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/../../escape": b"a"})
    result = await run_datum(store, make_task([source], "true"), workdir=workdir)
    assert result.state == "FAILED"
    assert "not a clean absolute path" in (result.error or "")
    assert leftovers(workdir) == []


# -- overhead ---------------------------------------------------------------------------


@needs_bwrap
async def test_per_datum_overhead(tmp_path: Path, workdir: Path) -> None:
    """Tiny datums back to back; ``TUSK_DATUM_BENCH=1000`` for the full measurement.

    Reports ms per datum above a bare ``sh -c cp`` of the same file, in wall time and in
    CPU time; the bound is on CPU time (machines here are shared); the docs record the
    measured wall-time numbers (bench/ measures latency on a quiet machine).
    """
    count = int(os.environ.get("TUSK_DATUM_BENCH", "100"))
    store = LocalStore(tmp_path / "bench-store")
    try:
        source = await make_input(store, {"/x.txt": b"0123456789"})
        task = make_task([source], "cp /pfs/in/* /pfs/out/")
        cache, sandbox, index = ChunkCache(), Sandbox(), FileIndex(store)
        bare_dir = tmp_path / "bare"
        (bare_dir / "in").mkdir(parents=True)
        (bare_dir / "out").mkdir()
        (bare_dir / "in" / "x.txt").write_bytes(b"0123456789")
        datum_ms: list[float] = []
        bare_ms: list[float] = []
        datum_cpu: list[float] = []
        bare_cpu: list[float] = []
        # Interleaved rounds so both see the same machine load.
        rounds = 10
        per_round = count // rounds
        for _ in range(rounds):
            started, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(per_round):
                result = await run_datum(
                    store, task, workdir=workdir, cache=cache, sandbox=sandbox, index=index
                )
                assert result.state == "SUCCESS"
            datum_ms.append((time.perf_counter() - started) * 1000 / per_round)
            datum_cpu.append((cpu_seconds() - cpu) * 1000 / per_round)
            wall, work = bare_cp_ms(bare_dir, per_round)
            bare_ms.append(wall)
            bare_cpu.append(work)
    finally:
        await store.close()
    datum, bare = statistics.median(datum_ms), statistics.median(bare_ms)
    cpu, bare_work = statistics.median(datum_cpu), statistics.median(bare_cpu)
    print(
        f"\n{count} datums: {datum:.1f} ms each, bare cp {bare:.1f} ms, overhead "
        f"{datum - bare:.1f}; CPU {cpu:.1f} ms each, bare cp {bare_work:.1f} ms"
    )
    # The bound is on work (CPU of this process and its sandboxes), not on wall time: on a
    # loaded machine (two test workers, other runs beside them) a datum's several processes
    # wait for a core more often than one bare cp, which said nothing about the runner.
    # ~2 ms here (6.0 against 4.0, at load 27, where wall time said 156 ms of overhead).
    assert cpu - bare_work < 20
