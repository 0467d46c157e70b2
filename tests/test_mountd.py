"""mountd end to end: real FUSE mounts of real PFS commits, driven over HTTP, used with ordinary tools.

The tools run as subprocesses (never blocking this event loop, which serves PFS and
the FUSE tree). Every mount is detached in teardown, so a failed test leaves none.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web

from shared.api.mount_client import MountClient, MountSpec
from shared.api.pfs_client import PfsClient
from shared.platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.fixtures.parts import fuse_missing
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port

# A missing FUSE part fails these tests (tests/fixtures/parts.py); they need root.
pytestmark = pytest.mark.usefixtures("fuse")

if fuse_missing() is None:
    from services.mountd.app import MANAGER, build_app
    from services.mountd.mounts import MountManager
    from services.mountd.runtime import MountSettings
    from services.mountd.session import force_unmount, is_mounted


@dataclass
class RunningMountd:
    url: str
    root: Path
    runner: web.AppRunner
    client: MountClient

    @property
    def manager(self) -> MountManager:
        return self.runner.app[MANAGER]


async def run(
    *cmd: str, check: bool = True, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool without blocking the loop that serves the mount."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cmd} hung for {timeout} s") from None
    result = subprocess.CompletedProcess(list(cmd), proc.returncode or 0, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}): {err.decode()}")
    return result


async def py(code: str, *args: str, check: bool = True) -> str:
    """Run Python ``code`` in a subprocess; its stdout."""
    result = await run(sys.executable, "-c", textwrap.dedent(code), *args, check=check)
    return result.stdout.decode()


async def blocks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put(client: PfsClient, repo: str, files: dict[str, bytes], branch: str = "master") -> str:
    async def sources() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for path, data in files.items():
            yield path, blocks(data)

    return (await client.put_files(repo, branch, sources())).commit.id


async def read_pfs(client: PfsClient, repo: str, ref: str, path: str) -> bytes:
    return b"".join([part async for part in client.get_file(repo, ref, path)])


async def pfs_paths(client: PfsClient, repo: str, ref: str) -> set[str]:
    return {f.path for f in await client.glob_files(repo, ref, "**") if f.type == "file"}


def new_mount_root() -> Path:
    # Outside pytest's 0700 basetemp, so a non-root user can reach the tree.
    root = Path(tempfile.mkdtemp(prefix="tusk-mnt-"))
    root.chmod(0o755)
    return root / "mnt"


@pytest.fixture
async def mountd(pfs: RunningPfs, tmp_path: Path) -> AsyncIterator[RunningMountd]:
    root = new_mount_root()
    settings = MountSettings(
        mount_root=root,
        scratch=tmp_path / "scratch",
        refresh_interval=0.2,
        cache_bytes=64 << 20,
        list_page=100,
    )
    config = pfs.config.replace(listen_port=free_port())
    runner = web.AppRunner(build_app(config, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", config.listen_port)
    await site.start()
    client = MountClient(f"http://127.0.0.1:{config.listen_port}")
    try:
        yield RunningMountd(client.base_url, root, runner, client)
    finally:
        await client.close()
        await runner.cleanup()
        if is_mounted(root):
            force_unmount(root)
        shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture
async def repo(pfs_client: PfsClient) -> str:
    await pfs_client.create_repo("data")
    return "data"


SAMPLE = {
    "/README.md": b"# sample\nhello tusk\n",
    "/images/cat.txt": b"meow\n" * 1000,
    "/images/dog.txt": b"woof\n",
    "/images/deep/er/bird.txt": b"tweet tusk\n",
    "/labels/all.csv": b"cat,1\ndog,2\n",
}


async def test_read_only_mount_works_with_ordinary_tools(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str, tmp_path: Path
) -> None:
    commit_id = await put(pfs_client, repo, SAMPLE)
    info = await mountd.client.mount(repo)
    assert info.path == str(mountd.root / repo) and info.commit == commit_id
    top = mountd.root / repo

    listing = (await run("ls", "-l", str(top / "images"))).stdout.decode()
    assert "cat.txt" in listing and "dog.txt" in listing and "deep" in listing
    assert str(len(SAMPLE["/images/cat.txt"])) in listing
    assert (await run("cat", str(top / "README.md"))).stdout == SAMPLE["/README.md"]

    found = (await run("find", str(top), "-type", "f")).stdout.decode().split()
    assert sorted(p[len(str(top)) :] for p in found) == sorted(SAMPLE)
    grep = (await run("grep", "-rl", "tusk", str(top))).stdout.decode().split()
    assert sorted(grep) == [str(top / "README.md"), str(top / "images/deep/er/bird.txt")]
    md5 = (await run("md5sum", str(top / "images/cat.txt"))).stdout.decode().split()[0]
    assert md5 == hashlib.md5(SAMPLE["/images/cat.txt"]).hexdigest()

    await run("cp", "-r", str(top), str(tmp_path / "copy"))
    for path, data in SAMPLE.items():
        assert (tmp_path / "copy" / path.lstrip("/")).read_bytes() == data

    walked = await py(
        """
        import os, sys
        for d, _, files in sorted(os.walk(sys.argv[1])):
            for f in sorted(files):
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    print(p[len(sys.argv[1]):], len(fh.read()), int(os.stat(p).st_mtime))
        """,
        str(top),
    )
    commit = await pfs_client.inspect_commit(repo, commit_id)
    assert commit.finished is not None
    finished = int(datetime.fromisoformat(commit.finished).timestamp())
    expected = sorted(f"{p} {len(d)} {finished}" for p, d in SAMPLE.items())
    assert sorted(walked.split("\n")[:-1]) == expected


async def test_errors_map_to_errno(mountd: RunningMountd, pfs_client: PfsClient, repo: str) -> None:
    await put(pfs_client, repo, SAMPLE)
    await mountd.client.mount(repo)
    await mountd.client.mount(repo, name="scratch", mode="rw")
    code = """
        import errno, os, sys
        def attempt(f):
            try:
                f()
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
        top, rw = sys.argv[1], sys.argv[2]
        print(attempt(lambda: open(top + "/data/README.md", "wb")))
        print(attempt(lambda: open(top + "/data/new.txt", "w")))
        print(attempt(lambda: os.mkdir(top + "/data/d")))
        print(attempt(lambda: os.unlink(top + "/data/README.md")))
        print(attempt(lambda: open(top + "/data/missing.txt")))
        print(attempt(lambda: open(top + "/data/images").read()))
        print(attempt(lambda: open(top + "/data/README.md/x")))
        print(attempt(lambda: os.mkdir(top + "/another")))
        print(attempt(lambda: os.rmdir(rw + "/images")))
        print(attempt(lambda: os.unlink(rw + "/images")))
    """
    out = await py(code, str(mountd.root), str(mountd.root / "scratch"))
    assert out.split() == [
        "EROFS",
        "EROFS",
        "EROFS",
        "EROFS",
        "ENOENT",
        "EISDIR",
        "ENOTDIR",
        "EACCES",
        "ENOTEMPTY",
        "EISDIR",
    ]
    # Another user may read but not write a rw mount (its files are root's, 0644).
    nobody = await run(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        sys.executable, "-c",
        "import sys\ntry:\n open(sys.argv[1] + '/x.txt', 'w')\nexcept PermissionError: print('EACCES')\n"
        "print(open(sys.argv[1] + '/README.md').read().split()[0])",
        str(mountd.root / "scratch"),
    )  # fmt: skip
    assert nobody.stdout.decode().split() == ["EACCES", "#"]


async def test_branch_mount_follows_new_commits_and_commit_mount_stays(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    first = await put(pfs_client, repo, {"/v.txt": b"one"})
    await mountd.client.mount(repo, name="cur")
    await mountd.client.mount(repo, first, name="old")
    assert (await run("cat", str(mountd.root / "cur/v.txt"))).stdout == b"one"

    # An open commit on the branch is never shown, even after a refresh.
    await pfs_client.start_commit(repo, "master")
    await put(pfs_client, repo, {"/v.txt": b"two, longer", "/new.txt": b"n"})
    info = await mountd.client.refresh("cur")
    assert info.commit == first
    assert (await run("cat", str(mountd.root / "cur/v.txt"))).stdout == b"one"

    second = (await pfs_client.finish_commit(repo, "master")).id
    info = await mountd.client.refresh("cur")
    assert info.commit == second
    assert (await run("cat", str(mountd.root / "cur/v.txt"))).stdout == b"two, longer"
    assert (await run("cat", str(mountd.root / "cur/new.txt"))).stdout == b"n"
    assert (await run("cat", str(mountd.root / "old/v.txt"))).stdout == b"one"
    assert (await run("ls", str(mountd.root / "old/new.txt"), check=False)).returncode != 0

    # Without a refresh call, the follower picks the next commit up within its interval.
    await put(pfs_client, repo, {"/v.txt": b"three"})
    for _ in range(50):
        if (await run("cat", str(mountd.root / "cur/v.txt"))).stdout == b"three":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("branch mount did not follow the new commit")


async def test_big_directory_is_listed_page_by_page(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    files = {f"/many/f{i:05d}.txt": str(i).encode() for i in range(2500)}
    await put(pfs_client, repo, files)
    await mountd.client.mount(repo)
    client = mountd.manager.client
    pages: list[int] = []
    original = client.list_files

    async def counting(*args: object, **kwargs: object) -> object:
        result = await original(*args, **kwargs)  # type: ignore[arg-type]
        pages.append(len(result[0]))
        return result

    client.list_files = counting  # type: ignore[assignment,method-assign]
    try:
        out = (await run("ls", "-f", str(mountd.root / repo / "many"))).stdout.decode().split()
    finally:
        client.list_files = original  # type: ignore[method-assign]
    names = sorted(n for n in out if n not in (".", ".."))
    assert names == sorted(p.rsplit("/", 1)[1] for p in files)
    assert len(pages) >= 25 and max(pages) <= 100


async def test_random_read_fetches_only_the_block_it_needs(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    data = random.Random(5).randbytes(24 << 20)
    await put(pfs_client, repo, {"/big.bin": data})
    await mountd.client.mount(repo)
    source = mountd.manager.source
    before = source.requests
    offset = 13 * (1 << 20) + 12345
    out = await py(
        """
        import sys
        with open(sys.argv[1], "rb") as f:
            f.seek(int(sys.argv[2]))
            sys.stdout.write(f.read(4096).hex())
        """,
        str(mountd.root / repo / "big.bin"),
        str(offset),
    )
    assert bytes.fromhex(out) == data[offset : offset + 4096]
    # The kernel may round the read up to a page range, still inside one 1 MiB block.
    assert source.requests - before == 1
    # A sequential read of the whole file is right, and read-ahead keeps it to few requests.
    md5 = (await run("md5sum", str(mountd.root / repo / "big.bin"))).stdout.decode().split()[0]
    assert md5 == hashlib.md5(data).hexdigest()
    assert source.requests - before <= 25


async def test_sequential_read_fetches_each_chunk_once_and_reads_ahead(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    data = random.Random(9).randbytes(40 << 20)
    await put(pfs_client, repo, {"/seq.bin": data})
    await mountd.client.mount(repo)
    source = mountd.manager.source
    chunks = len(
        {ref.chunk for ref in (await pfs_client.file_entry(repo, "master", "/seq.bin")).chunks}
    )
    before = source.requests
    md5 = (await run("md5sum", str(mountd.root / repo / "seq.bin"))).stdout.decode().split()[0]
    assert md5 == hashlib.md5(data).hexdigest()
    # Straight from the object store, chunk by chunk: 40 MiB is ~32 requests, each chunk
    # fetched once (read-ahead and the reads that need a chunk share one fetch).
    assert source.requests - before == chunks
    assert 20 <= chunks <= 60


async def test_cp_r_into_rw_mount_then_unmount_makes_one_commit(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str, tmp_path: Path
) -> None:
    base = await put(pfs_client, repo, SAMPLE)
    local = tmp_path / "upload"
    for i in range(30):
        (local / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (local / f"d{i % 3}" / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    info = await mountd.client.mount(repo, mode="rw")
    assert info.mode == "rw" and info.open_commit is None
    top = mountd.root / repo
    await run("cp", "-r", str(local), str(top / "upload"))
    await run("sh", "-c", f"echo more >> {top}/README.md")  # append to a committed file
    await run("sh", "-c", f"printf new > {top}/labels/all.csv")  # overwrite
    await run("mv", str(top / "images/dog.txt"), str(top / "images/puppy.txt"))
    await run("mv", str(top / "images/deep"), str(top / "shallow"))
    await run("rm", str(top / "images/cat.txt"))
    await run("mkdir", "-p", str(top / "made/here"))
    await run("truncate", "-s", "3", str(top / "upload/d0/f0.txt"))

    # The mount shows its own writes before anything is committed.
    assert (await run("cat", str(top / "README.md"))).stdout == SAMPLE["/README.md"] + b"more\n"
    assert (await run("cat", str(top / "images/puppy.txt"))).stdout == b"woof\n"
    assert (await run("cat", str(top / "shallow/er/bird.txt"))).stdout == b"tweet tusk\n"
    assert (await run("ls", str(top / "images"))).stdout.decode().split() == ["puppy.txt"]
    assert (await run("cat", str(top / "upload/d0/f0.txt"))).stdout == b"fil"
    assert (await pfs_client.inspect_commit(repo, "master")).state == "open"

    commit = await mountd.client.unmount(repo)
    assert commit is not None and commit.parent == base
    commits = [c async for c in pfs_client.iter_commits(repo, "master")]
    assert [c.id for c in commits] == [commit.id, base]
    expected = {p for p in SAMPLE if p not in ("/images/cat.txt", "/images/dog.txt")}
    expected -= {"/images/deep/er/bird.txt"}
    expected |= {"/images/puppy.txt", "/shallow/er/bird.txt"}
    expected |= {f"/upload/d{i % 3}/f{i}.txt" for i in range(30)}
    assert await pfs_paths(pfs_client, repo, commit.id) == expected
    assert await read_pfs(pfs_client, repo, commit.id, "/labels/all.csv") == b"new"
    assert await read_pfs(pfs_client, repo, commit.id, "/upload/d2/f29.txt") == b"file 29\n" * 30
    assert await read_pfs(pfs_client, repo, commit.id, "/upload/d0/f0.txt") == b"fil"
    assert (await run("test", "-e", str(top), check=False)).returncode == 1


async def test_commit_call_finishes_and_next_write_opens_a_new_commit(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    await mountd.client.mount(repo, mode="rw", name="w")
    top = mountd.root / "w"
    assert await mountd.client.commit("w") is None  # nothing written yet
    await run("sh", "-c", f"printf a > {top}/a.txt")
    first = await mountd.client.commit("w")
    assert first is not None and await pfs_paths(pfs_client, repo, first.id) == {"/a.txt"}
    await run("sh", "-c", f"printf b > {top}/b.txt")
    assert (await mountd.client.inspect_mount("w")).open_commit is not None
    second = await mountd.client.commit("w")
    assert second is not None and second.parent == first.id
    assert await pfs_paths(pfs_client, repo, second.id) == {"/a.txt", "/b.txt"}
    assert (await run("ls", str(top))).stdout.decode().split() == ["a.txt", "b.txt"]


async def test_unmount_never_commits_a_file_still_being_written(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    await mountd.client.mount(repo, mode="rw", name="w")
    top = mountd.root / "w"
    await run("sh", "-c", f"printf whole > {top}/whole.txt")
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'half')\nf.flush()\n"
        "print('ready', flush=True)\nsys.stdin.read()\n",
        str(top / "half.txt"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        assert (await writer.stdout.readline()).strip() == b"ready"
        with pytest.raises(FailedPrecondition, match=r"half\.txt"):
            await mountd.client.unmount("w")
        commit = await mountd.client.unmount("w", force=True)
        assert commit is not None
        assert await pfs_paths(pfs_client, repo, commit.id) == {"/whole.txt"}
    finally:
        writer.kill()
        await writer.wait()


async def test_mount_api_refuses_bad_requests(
    mountd: RunningMountd, pfs_client: PfsClient, repo: str
) -> None:
    commit_id = await put(pfs_client, repo, {"/a": b"a"})
    with pytest.raises(NotFound):
        await mountd.client.mount("nope")
    with pytest.raises(NotFound):
        await mountd.client.mount(repo, "no-such-branch")
    with pytest.raises(InvalidArgument, match="immutable"):
        await mountd.client.mount(repo, commit_id, mode="rw")
    with pytest.raises(InvalidArgument):
        await mountd.client.mount(repo, name="bad/name")
    await mountd.client.mount(repo)
    with pytest.raises(AlreadyExists):
        await mountd.client.mount(repo)
    with pytest.raises(NotFound):
        await mountd.client.unmount("other")
    assert [m.name for m in await mountd.client.list_mounts()] == [repo]
    for path in ("/healthz", "/readyz"):
        body = await mountd.client.request("GET", path)
        assert body["status"] in ("ok", "ready")
    spec = await mountd.client.request("GET", "/openapi.json")
    assert {"/mounts", "/mounts/{name}", "/mounts/{name}/commit"} <= set(spec["paths"])


def test_mount_spec_parses_pachyderm_syntax() -> None:
    assert MountSpec.parse("images") == MountSpec("images", "master", "images", "ro")
    assert MountSpec.parse("images@dev+w") == MountSpec("images", "dev", "images", "rw")
    with pytest.raises(InvalidArgument):
        MountSpec.parse("@dev")


async def test_crashed_mount_leaves_no_half_written_file(
    pfs: RunningPfs, pfs_client: PfsClient, repo: str, tmp_path: Path
) -> None:
    """kill -9 of a foreground rw mount mid-write; the next rw mount finishes only whole files."""
    root = new_mount_root()
    env = {
        **os.environ,
        "TUSK_CONFIG": str(tmp_path / "none.toml"),
        "TUSK_PFS_URL": pfs.url,
        "TUSK_MOUNT_SCRATCH": str(tmp_path / "scratch"),
    }

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.mountd", "mount", str(root), f"{repo}+w",
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(100):
            # In a thread: the mount's process calls back into PFS, served by this loop.
            if await asyncio.to_thread((root / repo).is_dir):
                return proc
            await asyncio.sleep(0.05)
        proc.kill()
        raise AssertionError(f"mount did not come up: {(await proc.communicate())[1].decode()}")

    mounted = await start()
    writer: asyncio.subprocess.Process | None = None
    try:
        await run("sh", "-c", f"printf whole > {root}/{repo}/whole.txt")
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'x' * 100000)\nf.flush()\n"
            "print('ready', flush=True)\nsys.stdin.read()\n",
            str(root / repo / "half.bin"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None
        assert (await writer.stdout.readline()).strip() == b"ready"
        mounted.kill()
        await mounted.wait()
        writer.kill()
        await writer.wait()
        force_unmount(root)
        open_commit = await pfs_client.inspect_commit(repo, "master")
        assert open_commit.state == "open"

        mounted = await start()
        mounted.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(mounted.communicate(), 30)
        assert mounted.returncode == 0, err.decode()
        assert f"committed {repo}@{open_commit.id}" in out.decode()
        finished = await pfs_client.inspect_commit(repo, "master")
        assert finished.id == open_commit.id and finished.state == "finished"
        assert await pfs_paths(pfs_client, repo, finished.id) == {"/whole.txt"}
        assert not is_mounted(root)
    finally:
        for proc in (mounted, writer):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        if is_mounted(root):
            force_unmount(root)
        shutil.rmtree(root.parent, ignore_errors=True)
