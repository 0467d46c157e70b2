"""``lazy: true`` inputs: served by the worker's FUSE tree from the chunk store, not copied.

Real FUSE (pyfuse3 in this event loop), real bubblewrap sandboxes, a real local object
store counted by ``CountingStore``. The event loop serves the tree, so this test only
touches the tree from threads or subprocesses, never with blocking calls of its own.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.scheduler.backends.pod_sandbox import PodSandbox
from services.scheduler.datum_runner import run_datum
from services.scheduler.tasks import DatumResult, DatumTask, DatumTaskFile, DatumTaskInput
from services.scheduler.worker import lazy_inputs
from shared.storage.chunking import ChunkCache, write_files
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex
from tests.fixtures.cluster import Cluster
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.parts import fuse_missing

# FUSE (as root: allow_other, which bubblewrap's user namespace needs) and the sandbox;
# a missing part fails these tests (tests/fixtures/parts.py), never skips them.
needs_fuse = pytest.mark.usefixtures("fuse", "bubblewrap")

if fuse_missing() is None:
    from services.scheduler.lazy_fs import LazyInputs, mount_lazy_inputs

MiB = 1 << 20


@pytest.fixture
async def lazy(store: CountingStore, tmp_path: Path) -> AsyncIterator[LazyInputs]:
    async with mount_lazy_inputs(store, ChunkCache(64 * MiB), tmp_path / "lazy") as mounted:
        yield mounted


async def make_input(
    store: CountingStore, files: dict[str, bytes], *, name: str = "in", lazy: bool = True
) -> DatumTaskInput:
    entries = await write_files(store, list(files.values()))
    return DatumTaskInput(
        name=name,
        repo=f"{name}-repo",
        branch="master",
        commit=f"{name}-commit",
        match="/",
        files=tuple(
            DatumTaskFile(name, path, entry) for path, entry in zip(files, entries, strict=True)
        ),
        lazy=lazy,
    )


def make_task(inputs: list[DatumTaskInput], script: str) -> DatumTask:
    return DatumTask(
        pipeline="lazy",
        job_id="job-1",
        datum_id="datum-1",
        attempt=1,
        inputs=tuple(inputs),
        cmd=("sh", "-c", script),
        output_commit="out-commit",
    )


async def outputs(store: CountingStore, result: DatumResult) -> dict[str, bytes]:
    from shared.storage.chunking import read_all

    assert result.state == "SUCCESS", (result.error, result.logs)
    index = FileIndex(store)
    return {
        item.key: await read_all(store, from_index_entry(item))
        async for item in index.scan(result.output_root)
    }


async def tree_listing(lazy: LazyInputs) -> list[str]:
    # From a thread: this loop answers the kernel's requests for the tree.
    return sorted(await asyncio.to_thread(os.listdir, lazy.mountpoint))


async def datum_directories(lazy: LazyInputs, timeout: float = 5) -> list[str]:
    """The tree's datum directories once there is one (a datum started running)."""
    async with asyncio.timeout(timeout):
        # Polled: the tree is watched from outside, as another process would see it.
        while not (seen := await tree_listing(lazy)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return seen


@needs_fuse
async def test_reading_4k_of_a_64mib_lazy_file_fetches_only_its_chunks(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    data = os.urandom(64 * MiB)
    source = await make_input(store, {"/big.bin": data})
    chunks = len(source.files[0].entry.chunks)
    assert chunks >= 16, "the file must span many chunks for the count to mean anything"
    block = (32 * MiB) // 4096 + 3
    store.reset()
    started = time.perf_counter()
    result = await run_datum(
        store,
        make_task(
            [source],
            f"dd if=/pfs/in/big.bin of=/pfs/out/slice bs=4096 skip={block} count=1 status=none",
        ),
        workdir=workdir,
        cache=lazy.tree.cache,
        lazy=lazy,
    )
    seconds = time.perf_counter() - started
    gets = store.count_gets("chunks/")
    fetched = sum(n for key, n in store.read.items() if key.startswith("chunks/"))
    print(
        f"\n64 MiB lazy file ({chunks} chunks), 4 KiB read at 32 MiB: {gets} chunk gets, "
        f"{fetched} bytes fetched, {result.download_bytes} bytes served, {seconds * 1000:.0f} ms"
    )
    assert await outputs(store, result) == {"/slice": data[block * 4096 : (block + 1) * 4096]}
    assert 1 <= gets <= 3
    assert result.download_bytes < 2 * MiB
    assert await asyncio.to_thread(os.listdir, workdir) == []


@needs_fuse
async def test_copied_input_for_comparison_downloads_everything(
    store: CountingStore, workdir: Path
) -> None:
    # The same datum without lazy: every chunk is fetched, which the lazy test avoids.
    data = os.urandom(8 * MiB)
    source = await make_input(store, {"/big.bin": data}, lazy=False)
    store.reset()
    result = await run_datum(
        store,
        make_task([source], "dd if=/pfs/in/big.bin of=/pfs/out/slice bs=4096 count=1 status=none"),
        workdir=workdir,
    )
    assert store.count_gets("chunks/") == len(source.files[0].entry.chunks)
    assert await outputs(store, result) == {"/slice": data[:4096]}
    assert result.download_bytes == len(data)


@needs_fuse
async def test_lazy_input_is_read_only_in_the_sandbox_and_in_the_tree(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    source = await make_input(store, {"/a.txt": b"keep me", "/dir/b.txt": b"b"})
    script = (
        "for step in 'echo x > /pfs/in/a.txt' 'echo x >> /pfs/in/a.txt' 'touch /pfs/in/new' "
        "'rm /pfs/in/a.txt' 'mkdir /pfs/in/d' 'mv /pfs/in/a.txt /pfs/in/c.txt' "
        "'chmod 777 /pfs/in/a.txt' 'truncate -s 0 /pfs/in/dir/b.txt'; do "
        '  if sh -c "$step" 2>>/pfs/out/errors; then echo "$step worked" >> /pfs/out/worked; fi; '
        "done; cat /pfs/in/a.txt > /pfs/out/a.txt"
    )
    result = await run_datum(store, make_task([source], script), workdir=workdir, lazy=lazy)
    files = await outputs(store, result)
    assert "/worked" not in files, files["/worked"].decode()
    assert files["/a.txt"] == b"keep me"
    errors = files["/errors"].decode()
    assert errors.count("Read-only file system") >= 8, errors

    # The tree itself refuses changes, whoever asks (here: this machine, outside a sandbox).
    with lazy.datum({"in": [(f.path.lstrip("/"), f.entry) for f in source.files]}) as datum:
        target = lazy.path(datum) / "in" / "a.txt"

        def attempts() -> list[int]:
            codes = []
            for change in (
                lambda: open(target, "r+b"),  # noqa: SIM115
                lambda: open(target.parent / "new", "wb"),  # noqa: SIM115
                lambda: os.mkdir(target.parent / "d"),
                lambda: os.unlink(target),
                lambda: os.truncate(target, 0),
            ):
                try:
                    change()
                except OSError as exc:
                    codes.append(exc.errno or 0)
                else:
                    codes.append(0)
            return codes

        assert await asyncio.to_thread(attempts) == [errno.EROFS] * 5
        assert await asyncio.to_thread(target.read_bytes) == b"keep me"


@needs_fuse
async def test_ls_cat_md5sum_and_sizes_of_lazy_files(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    files = {
        "/a.txt": b"hello lazy\n",
        "/empty": b"",
        "/deep/dir/big.bin": os.urandom(3 * MiB + 17),
        "/deep/c.csv": b"x,y\n1,2\n",
    }
    source = await make_input(store, files)
    script = (
        "cd /pfs/in && ls -lR > /pfs/out/ls && cat a.txt > /pfs/out/cat && "
        "find . -type f | sort > /pfs/out/find && "
        "md5sum $(find . -type f | sort) > /pfs/out/md5 && "
        "stat -c '%n %s' $(find . -type f | sort) > /pfs/out/sizes"
    )
    result = await run_datum(store, make_task([source], script), workdir=workdir, lazy=lazy)
    out = await outputs(store, result)
    names = sorted("." + path for path in files)
    assert out["/cat"] == b"hello lazy\n"
    assert out["/find"].decode().split() == names
    assert out["/md5"].decode().splitlines() == [
        f"{hashlib.md5(files[name[1:]]).hexdigest()}  {name}" for name in names
    ]
    assert out["/sizes"].decode().splitlines() == [f"{n} {len(files[n[1:]])}" for n in names]
    listing = out["/ls"].decode()
    # The worker owns the tree; its uid is the command's (nobody) in the sandbox.
    assert f"-r--r--r-- 1 nobody nogroup {3 * MiB + 17} " in listing
    assert "dr-xr-xr-x" in listing and "big.bin" in listing and "c.csv" in listing
    # Every byte was read once (md5sum) and at least once more (cat, size checks none).
    assert result.download_bytes >= sum(len(d) for d in files.values())

    # The same command over a copied input gives the same answers.
    copied = replace(source, lazy=False)
    again = await outputs(
        store, await run_datum(store, make_task([copied], script), workdir=workdir)
    )
    for name in ("/cat", "/find", "/md5", "/sizes"):
        assert again[name] == out[name]


@needs_fuse
async def test_datum_files_leave_the_tree_when_the_datum_ends(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    source = await make_input(store, {"/a.txt": b"a"})
    # A long enough command to see the datum's directory while it runs.
    running = asyncio.create_task(
        run_datum(
            store, make_task([source], "cat /pfs/in/a.txt && sleep 0.5"), workdir=workdir, lazy=lazy
        )
    )
    (name,) = await datum_directories(lazy)
    during = lazy.mountpoint / name / "in" / "a.txt"
    assert await asyncio.to_thread(during.read_bytes) == b"a"
    result = await running
    assert result.logs == "a"
    assert await tree_listing(lazy) == []
    assert not await asyncio.to_thread(during.exists)
    assert not await asyncio.to_thread((lazy.mountpoint / name).exists)

    # A cancelled datum (a worker being stopped) leaves nothing behind either.
    cancelled = asyncio.create_task(
        run_datum(store, make_task([source], "sleep 30"), workdir=workdir, lazy=lazy)
    )
    await datum_directories(lazy)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await tree_listing(lazy) == []
    assert await asyncio.to_thread(os.listdir, workdir) == []


@needs_fuse
async def test_lazy_and_copied_inputs_mix_in_one_datum(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    left = await make_input(store, {"/x": b"lazy side"}, name="left")
    right = await make_input(store, {"/y": b"copied side"}, name="right", lazy=False)
    script = (
        "cat /pfs/left/x /pfs/right/y > /pfs/out/both && "
        "grep -c ' /pfs/left .* fuse.tusk-lazy ' /proc/self/mountinfo > /pfs/out/fuse && "
        "(grep ' /pfs/right ' /proc/self/mountinfo | grep -c fuse || true) > /pfs/out/right"
    )
    result = await run_datum(store, make_task([left, right], script), workdir=workdir, lazy=lazy)
    out = await outputs(store, result)
    assert out["/both"] == b"lazy sidecopied side"
    assert out["/fuse"] == b"1\n"
    assert out["/right"] == b"0\n"


@pytest.mark.usefixtures("bubblewrap")
async def test_without_a_tree_lazy_inputs_are_copied_and_the_worker_says_why(
    store: CountingStore, workdir: Path
) -> None:
    # Pod sandboxes cannot see a FUSE mount made in the worker's container.
    async with lazy_inputs(store, ChunkCache(), workdir / "lazy", PodSandbox()) as (tree, why):
        assert tree is None
        assert why is not None and "pod" in why
    source = await make_input(store, {"/a.txt": b"still here"})
    result = await run_datum(
        store, make_task([source], "cat /pfs/in/a.txt > /pfs/out/a"), workdir=workdir, lazy=tree
    )
    assert await outputs(store, result) == {"/a": b"still here"}
    assert result.download_bytes == len(b"still here")


# -- end to end -------------------------------------------------------------------------


def _md5_spec(name: str, *, lazy: bool) -> dict[str, Any]:
    # The lazy pipeline fails unless its input really is the worker's FUSE tree.
    check = "grep -q ' /pfs/data .* fuse.tusk-lazy ' /proc/self/mountinfo && " if lazy else ""
    return {
        "pipeline": {"name": name},
        "transform": {
            "cmd": [
                "sh",
                "-c",
                check + 'md5sum < "$data" > /pfs/out/$(basename "$data").md5 && '
                'wc -c < "$data" | tr -d " " > /pfs/out/$(basename "$data").size',
            ],
        },
        "input": {"pfs": {"repo": "data", "glob": "/*", "lazy": lazy}},
    }


@needs_fuse
async def test_lazy_pipeline_outputs_equal_copied_pipeline_outputs(cluster: Cluster) -> None:
    from tests.test_pipelines import files, wait_for_jobs

    await cluster.pfs.create_repo("data")
    items = {"/a.bin": os.urandom(2 * MiB + 5), "/b.txt": b"small\n", "/c.empty": b""}
    await cluster.pfs.put_files("data", "master", files(items))
    await cluster.pps.create_pipeline(_md5_spec("copied", lazy=False))
    await cluster.pps.create_pipeline(_md5_spec("lazy", lazy=True))
    (copied_job,) = await wait_for_jobs(cluster, "copied", 1)
    (lazy_job,) = await wait_for_jobs(cluster, "lazy", 1)
    assert (copied_job.state, lazy_job.state) == ("JOB_SUCCESS", "JOB_SUCCESS"), lazy_job

    async def output(repo: str) -> dict[str, bytes]:
        found = {}
        async for info in cluster.pfs.iter_files(repo, "master"):
            found[info.path] = b"".join(
                [c async for c in cluster.pfs.get_file(repo, "master", info.path)]
            )
        return found

    lazy_out = await output("lazy")
    assert lazy_out == await output("copied")
    assert lazy_out["/a.bin.md5"].decode().split()[0] == hashlib.md5(items["/a.bin"]).hexdigest()
    assert lazy_out["/a.bin.size"] == f"{len(items['/a.bin'])}\n".encode()


@needs_fuse
async def test_lazy_parts_of_one_input_share_its_directory_and_links_store_by_reference(
    store: CountingStore, workdir: Path, lazy: LazyInputs
) -> None:
    """A group's parts of one lazy input are served together at /pfs/in, and a symlink to
    one of them is stored by reference, without reading it."""
    first = await make_input(store, {"/a/1.txt": b"one" * 1000})
    second = await make_input(store, {"/b/2.txt": b"two"})
    parts = [replace(first, match="/a", group_by="k"), replace(second, match="/b", group_by="k")]
    store.reset()
    script = "cat /pfs/in/b/2.txt > /pfs/out/copy && ln -s /pfs/in/a/1.txt /pfs/out/link"
    result = await run_datum(
        store, make_task(parts, script), workdir=workdir, cache=lazy.tree.cache, lazy=lazy
    )
    assert await outputs(store, result) == {"/copy": b"two", "/link": b"one" * 1000}
    stored = {
        item.key: from_index_entry(item) async for item in FileIndex(store).scan(result.output_root)
    }
    assert stored["/link"] == first.files[0].entry
    # Only the file the command read was fetched (and read back above by this test).
    assert result.download_bytes == 3
