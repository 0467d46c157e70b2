"""The ``tusk`` CLI: parsing, formatting and the one-line error contract (fast, in-process),
then the real console script as a subprocess against a live PFS (end to end)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web
from click.testing import CliRunner

from shared.api.pfs_client import PfsClient
from shared.platform.errors import InvalidArgument, NotFound
from tests.fixtures.parts import require, tusk_script_missing
from tests.fixtures.servers import free_port
from tusk.cli.args import parse_target, writable_branch
from tusk.cli.errors import error_line
from tusk.cli.file_commands import local_path_for
from tusk.cli.main import cli
from tusk.cli.output import format_table, human_duration, human_size, relative_time
from tusk.cli.progress import Progress
from tusk.cli.sources import plan_uploads

TUSK = Path(sys.executable).parent / "tusk"


# --- output formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1258291, "1.2 MiB"), (3 << 30, "3.0 GiB")],
)
def test_human_size_uses_powers_of_1024(size: int, text: str) -> None:
    assert human_size(size) == text


def test_relative_time_reads_like_pachctl() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    three_s = (now - timedelta(seconds=3)).isoformat()
    assert relative_time(three_s, now) == "3 seconds ago"
    assert relative_time((now - timedelta(minutes=1, seconds=10)).isoformat(), now) == (
        "About a minute ago"
    )
    assert relative_time((now - timedelta(hours=5)).isoformat(), now) == "5 hours ago"
    assert relative_time(None, now) == "-"
    # A naive timestamp is UTC, not local time.
    assert relative_time("2024-05-01T11:59:57", now) == "3 seconds ago"
    assert human_duration(0.2) == "Less than a second"
    assert human_duration(3 * 86400) == "3 days"


def test_table_columns_are_aligned_under_their_headers() -> None:
    text = format_table(("NAME", "SIZE"), [("a", "1 B"), ("longer-name", "10.0 KiB")])
    lines = text.splitlines()
    assert lines[0].index("SIZE") == lines[1].index("1 B") == lines[2].index("10.0 KiB")
    assert all(line == line.rstrip() for line in lines)


# --- argument parsing -------------------------------------------------------------------------


def test_trailing_slash_means_inside_the_directory() -> None:
    assert parse_target("r@master:/dir/").into_dir
    assert not parse_target("r@master:/dir").into_dir
    target = parse_target("r@master^:/a//")
    assert (target.repo, target.ref) == ("r", "master^")


@pytest.mark.parametrize("text", ["bad name@master", "r@:/x", "r@master:/a/../b", "r@ma ster"])
def test_malformed_targets_are_refused_locally(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_target(text)


@pytest.mark.parametrize("ref", ["master^", "master~2", "0123456789abcdef0123456789abcdef"])
def test_writes_need_a_branch_not_a_commit(ref: str) -> None:
    with pytest.raises(InvalidArgument, match="writes to a branch"):
        writable_branch(parse_target(f"r@{ref}:/x"), "put file")
    assert writable_branch(parse_target("r:/x"), "put file") == "master"


# --- put file destinations --------------------------------------------------------------------


@pytest.fixture
def local_tree(tmp_path: Path) -> Path:
    (tmp_path / "one.csv").write_text("1")
    (tmp_path / "two.csv").write_text("22")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("bb")
    return tmp_path


def _dsts(target: str, sources: list[str], recursive: bool = False) -> list[str]:
    return [u.dst for u in plan_uploads(parse_target(target), sources, recursive=recursive)]


def test_put_destinations_follow_pachctl(local_tree: Path) -> None:
    one, two, tree = (
        str(local_tree / "one.csv"),
        str(local_tree / "two.csv"),
        str(local_tree / "tree"),
    )
    assert _dsts("r@master", [one]) == ["/one.csv"]
    assert _dsts("r@master:/x/data.csv", [one]) == ["/x/data.csv"]
    assert _dsts("r@master:/x/", [one]) == ["/x/one.csv"]
    assert _dsts("r@master:/x", [one, two]) == ["/x/one.csv", "/x/two.csv"]
    assert _dsts("r@master:/in", [tree], recursive=True) == ["/in/a.txt", "/in/sub/b.txt"]
    assert _dsts("r@master", [tree], recursive=True) == ["/tree/a.txt", "/tree/sub/b.txt"]
    assert _dsts("r@master:/s.txt", ["-"]) == ["/s.txt"]
    assert _dsts("r@master", ["https://example.com/d/file%201.txt"]) == ["/file 1.txt"]


def test_put_plan_sizes_local_files_for_the_progress_bar(local_tree: Path) -> None:
    plan = plan_uploads(parse_target("r@master:/in"), [str(local_tree / "tree")], recursive=True)
    assert [u.size for u in plan] == [1, 2]


@pytest.mark.parametrize(
    ("target", "sources", "message"),
    [
        ("r@master", ["-"], "needs a file path"),
        ("r@master:/d/", ["-"], "needs a file path"),
        ("r@master:/x", ["-", "{one}"], "cannot be combined"),
        ("r@master", ["{tree}"], "use -r"),
        ("r@master", ["{missing}"], "no such file"),
        ("r@master:/x/", ["{one}", "{other_one}"], "both write /x/one.csv"),
    ],
)
def test_put_plan_refusals(local_tree: Path, target: str, sources: list[str], message: str) -> None:
    (local_tree / "other").mkdir()
    (local_tree / "other" / "one.csv").write_text("x")
    names = {
        "one": local_tree / "one.csv",
        "tree": local_tree / "tree",
        "missing": local_tree / "nope",
        "other_one": local_tree / "other" / "one.csv",
    }
    resolved = [s.format(**names) for s in sources]
    with pytest.raises(InvalidArgument, match=message):
        plan_uploads(parse_target(target), resolved, recursive=False)


def test_downloaded_paths_cannot_escape_the_target_directory(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert local_path_for(root, "/d", "/d/x/y.txt") == os.path.join(root, "x", "y.txt")
    assert local_path_for(root, "/d/f.txt", "/d/f.txt") == os.path.join(root, "f.txt")
    assert local_path_for(root, "/", "/top.txt") == os.path.join(root, "top.txt")
    with pytest.raises(InvalidArgument):
        local_path_for(root, "/d", "/d/../etc/passwd")
    with pytest.raises(InvalidArgument):
        local_path_for(root, "/d", "/elsewhere/x")


# --- error mapping ----------------------------------------------------------------------------


def test_error_mapping_is_one_line_with_exit_codes() -> None:
    assert error_line(NotFound("repo 'x' not found")) == ("error: repo 'x' not found", 1)
    line, code = error_line(click.UsageError("No such option: --x"))
    assert (line, code) == ("error: No such option: --x", 2)
    line, code = error_line(RuntimeError("boom\nsecond line"))
    assert code == 1 and "\n" not in line and "--debug" in line and "RuntimeError" in line
    assert error_line(KeyboardInterrupt())[1] == 130


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TUSK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUSK_PFS_URL", f"http://127.0.0.1:{free_port()}")
    return CliRunner()


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    return lines[0]


def test_bad_repo_name_is_one_line_and_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["create", "repo", "no spaces"])
    assert result.exit_code == 1
    assert "invalid repo name" in _one_error_line(result.stderr)


def test_usage_error_is_one_line_and_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["list", "commit", "r", "--bogus"])
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "--bogus" in line and "tusk list commit --help" in line


def test_unreachable_cluster_suggests_tusk_up(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["list", "repo"])
    assert result.exit_code == 1
    assert "tusk up" in _one_error_line(result.stderr)


def test_debug_flag_shows_the_traceback(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--debug", "list", "repo"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_status_of_a_home_with_no_cluster(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["status", "-o", "json"])
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["running"] is False and body["home"].endswith("home")
    text = runner.invoke(cli, ["status"])
    assert "not running" in text.stdout


def test_progress_counts_bytes_and_stays_silent_when_disabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for size in (3, 4):
            yield b"x" * size

    async def drain(progress: Progress) -> int:
        return sum([len(b) async for b in progress.count(blocks())])

    with Progress("put", 7, enabled=False) as quiet:
        assert asyncio.run(drain(quiet)) == 7 and quiet.bytes == 7 and not quiet.visible
    assert capsys.readouterr().err == ""
    with Progress("put", 7, enabled=True) as shown:
        asyncio.run(drain(shown))
    assert "put" in capsys.readouterr().err


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["version", "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["version"]


# --- commands over a fake client (no server) ---------------------------------------------------


# --- end to end: the console script against a live PFS ----------------------------------------


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass(frozen=True)
class Tusk:
    """Runs the installed ``tusk`` script with an environment pointing at one PFS."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str, stdin: bytes | None = None) -> Ran:
        process = await asyncio.create_subprocess_exec(
            str(TUSK),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin or b""), 60)
        assert process.returncode is not None
        return Ran(process.returncode, out, err.decode())

    async def ok(self, *args: str, stdin: bytes | None = None) -> Ran:
        ran = await self(*args, stdin=stdin)
        assert ran.code == 0, f"tusk {' '.join(args)} failed: {ran.stderr}"
        return ran

    async def fails(self, *args: str) -> str:
        """Run a command that must fail: non-zero exit, one error line, no traceback."""
        ran = await self(*args)
        assert ran.code != 0, f"tusk {' '.join(args)} unexpectedly succeeded"
        return _one_error_line(ran.stderr)


def _tusk_env(tmp_path: Path, pfs_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "tusk-home"), TUSK_PFS_URL=pfs_url)
    return env


@pytest.fixture
def tusk(pfs_url: str, tmp_path: Path) -> Iterator[Tusk]:
    require(tusk_script_missing(), "the tusk console script")
    work = tmp_path / "work"
    work.mkdir()
    yield Tusk(_tusk_env(tmp_path, pfs_url), work)


async def test_put_files_then_read_them_back(tusk: Tusk, tmp_path: Path) -> None:
    await tusk.ok("create", "repo", "images", "-d", "test images")
    single = tusk.cwd / "hello.txt"
    single.write_bytes(b"hello\n")
    await tusk.ok("put", "file", "images@master", "-f", str(single))  # no path: its own name

    tree = tusk.cwd / "batch"
    for i in range(100):
        sub = tree / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:03}.txt").write_text(f"file {i}\n")
    before = len((await tusk.ok("list", "commit", "images", "-o", "json")).json())
    await tusk.ok("put", "file", "images@master:/batch", "-r", "-f", str(tree))
    after = len((await tusk.ok("list", "commit", "images", "-o", "json")).json())
    assert after == before + 1  # 100 files, one request, one commit

    await tusk.ok("put", "file", "images@master:/log.txt", "-f", "-", stdin=b"one\n")
    await tusk.ok("put", "file", "images@master:/log.txt", "-f", "-", "--append", stdin=b"two\n")

    got = await tusk.ok("get", "file", "images@master:/log.txt")
    assert got.stdout == b"one\ntwo\n"
    assert (await tusk.ok("get", "file", "images@master:/hello.txt")).stdout == b"hello\n"
    assert (await tusk.ok("get", "file", "images@master^:/log.txt")).stdout == b"one\n"

    # A reader that stops early (``| head``) ends the download quietly.
    big = tusk.cwd / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    await tusk.ok("put", "file", "images@master:/big.bin", "-f", str(big))
    shell = await asyncio.create_subprocess_shell(
        f"'{TUSK}' get file images@master:/big.bin | head -c 5 >/dev/null",
        stderr=asyncio.subprocess.PIPE,
        env=tusk.env,
    )
    _, piped_err = await asyncio.wait_for(shell.communicate(), 30)
    assert piped_err == b""
    await tusk.ok("delete", "file", "images@master:/big.bin")

    out_file = tusk.cwd / "copy.txt"
    await tusk.ok("get", "file", "images@master:/batch/d1/f001.txt", "-o", str(out_file))
    assert out_file.read_text() == "file 1\n"

    out_dir = tusk.cwd / "restored"
    await tusk.ok("get", "file", "images@master:/batch", "-r", "-o", str(out_dir))
    restored = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.txt"))
    assert restored == sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.txt"))
    assert (out_dir / "d3" / "f099.txt").read_text() == "file 99\n"

    listing = (await tusk.ok("list", "file", "images@master")).text.splitlines()
    assert listing[0].split() == ["NAME", "TYPE", "SIZE"]
    assert [line.split()[0] for line in listing[1:]] == ["/batch/", "/hello.txt", "/log.txt"]
    in_dir = (await tusk.ok("list", "file", "images@master:/batch/d0", "-o", "json")).json()
    assert len(in_dir) == 25 and all(f["type"] == "file" for f in in_dir)

    inspected_file = (
        await tusk.ok("inspect", "file", "images@master:/log.txt", "-o", "json")
    ).json()
    assert (inspected_file["type"], inspected_file["size_bytes"]) == ("file", 8)
    assert "Size: 8 B" in (await tusk.ok("inspect", "file", "images@master:/log.txt")).text

    globbed = (
        await tusk.ok("glob", "file", "images@master:/batch/*/f00?.txt", "-o", "json")
    ).json()
    assert sorted(f["path"] for f in globbed) == sorted(
        f"/batch/d{i % 4}/f{i:03}.txt" for i in range(10)
    )

    diff = (await tusk.ok("diff", "file", "images@master", "-o", "json")).json()
    assert [(c["path"], c["change"]) for c in diff] == [("/big.bin", "deleted")]
    diff = (await tusk.ok("diff", "file", "images@master", "images@master~3", "-o", "json")).json()
    assert [(c["path"], c["change"]) for c in diff] == [("/log.txt", "modified")]
    diff_text = (await tusk.ok("diff", "file", "images@master", "images@master~5")).text
    assert "/log.txt" in diff_text and "added" in diff_text

    commits = (await tusk.ok("list", "commit", "images@master", "-o", "json")).json()
    assert len(commits) == 6
    newest = commits[0]
    assert {"id", "branch", "parent", "started", "finished", "size_bytes", "provenance"} <= set(
        newest
    )
    assert newest["branch"] == "master" and newest["parent"] == commits[1]["id"]
    assert newest["finished"] is not None and newest["size_bytes"] > 0
    capped = (await tusk.ok("list", "commit", "images", "--limit", "2", "-o", "json")).json()
    assert [c["id"] for c in capped] == [c["id"] for c in commits[:2]]

    inspected = (await tusk.ok("inspect", "commit", f"images@{newest['id']}", "-o", "json")).json()
    assert inspected["id"] == newest["id"]
    table = (await tusk.ok("list", "repo")).text
    assert "images" in table and "test images" in table


async def test_commit_and_branch_lifecycle(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "logs")
    commit_id = (await tusk.ok("start", "commit", "logs@master", "-m", "by hand")).text.strip()
    await tusk.ok("put", "file", "logs@master:/a.txt", "-f", "-", stdin=b"a")
    open_commit = (await tusk.ok("inspect", "commit", f"logs@{commit_id}", "-o", "json")).json()
    assert open_commit["finished"] is None
    await tusk.ok("finish", "commit", "logs@master")
    waited = (await tusk.ok("wait", "commit", f"logs@{commit_id}", "-o", "json")).json()
    assert waited["id"] == commit_id and waited["finished"] is not None

    await tusk.ok("create", "branch", "logs@dev", "--head", "master")
    branches = (await tusk.ok("list", "branch", "logs", "-o", "json")).json()
    assert {b["name"]: b["head"] for b in branches} == {"master": commit_id, "dev": commit_id}
    await tusk.ok("copy", "file", "logs@master:/a.txt", "logs@dev:/b.txt")
    assert (await tusk.ok("get", "file", "logs@dev:/b.txt")).stdout == b"a"
    await tusk.ok("delete", "file", "logs@dev:/a.txt")
    names = [f["path"] for f in (await tusk.ok("list", "file", "logs@dev", "-o", "json")).json()]
    assert names == ["/b.txt"]
    await tusk.ok("delete", "branch", "logs@dev")
    assert "not found" in await tusk.fails("inspect", "branch", "logs@dev")


async def test_subscribe_prints_one_json_object_per_finished_commit(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "feed")
    await tusk.ok("put", "file", "feed@master:/f0", "-f", "-", stdin=b"x")
    process = await asyncio.create_subprocess_exec(
        str(TUSK),
        *("subscribe", "commit", "feed@master", "--all", "-o", "json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=tusk.env,
    )
    assert process.stdout is not None and process.stderr is not None

    async def next_commit() -> dict[str, Any]:
        line = await asyncio.wait_for(process.stdout.readline(), 20)  # type: ignore[union-attr]
        if not line:
            pytest.fail(f"subscribe ended early: {(await process.stderr.read()).decode()}")  # type: ignore[union-attr]
        return dict(json.loads(line))

    try:
        # --all replays the existing commit first; once it is printed the subscription is live.
        first = await next_commit()
        await tusk.ok("put", "file", "feed@master:/f1", "-f", "-", stdin=b"y")
        second = await next_commit()
        assert (first["repo"], second["repo"]) == ("feed", "feed")
        assert second["parent"] == first["id"] and second["finished"] is not None
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    assert "Traceback" not in (await process.stderr.read()).decode()


async def test_errors_are_one_line_without_traceback(tusk: Tusk) -> None:
    assert "invalid repo name" in await tusk.fails("create", "repo", "bad/name")
    assert "not found" in await tusk.fails("list", "file", "missing@master")
    assert "not found" in await tusk.fails("inspect", "repo", "missing")
    await tusk.ok("create", "repo", "data")
    assert "already exists" in await tusk.fails("create", "repo", "data")
    await tusk.ok("put", "file", "data@master:/x", "-f", "-", stdin=b"x")
    head = (await tusk.ok("inspect", "commit", "data@master", "-o", "json")).json()["id"]
    assert "commit id" in await tusk.fails("put", "file", f"data@{head}:/y", "-f", "-")
    assert "not found" in await tusk.fails("get", "file", "data@master:/nope")
    assert "no such file" in await tusk.fails("put", "file", "data@master", "-f", "/nonexistent")


@pytest.fixture
async def web_files() -> AsyncIterator[str]:
    """A tiny HTTP server on loopback serving /data.csv (and 404 for anything else)."""
    app = web.Application()

    async def data(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(3):
            await response.write(f"row {i}\n".encode() * 50_000)
        return response

    app.router.add_get("/files/data.csv", data)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_put_file_from_a_url_streams_the_download(tusk: Tusk, web_files: str) -> None:
    await tusk.ok("create", "repo", "web")
    await tusk.ok("put", "file", "web@master", "-f", f"{web_files}/files/data.csv")
    got = await tusk.ok("get", "file", "web@master:/data.csv")
    assert got.stdout == b"".join(f"row {i}\n".encode() * 50_000 for i in range(3))
    missing = await tusk.fails("put", "file", "web@master:/x.csv", "-f", f"{web_files}/nope.csv")
    assert "cannot download" in missing and "404" in missing
    names = [f["path"] for f in (await tusk.ok("list", "file", "web@master", "-o", "json")).json()]
    assert names == ["/data.csv"]  # the failed upload left nothing behind


async def test_unreachable_cluster_is_one_line_suggesting_tusk_up(tmp_path: Path) -> None:
    require(tusk_script_missing(), "the tusk console script")
    tusk = Tusk(_tusk_env(tmp_path, f"http://127.0.0.1:{free_port()}"), tmp_path)
    assert "tusk up" in await tusk.fails("list", "repo")


async def test_list_commit_walks_every_page_and_limit_caps(tusk: Tusk, pfs_url: str) -> None:
    await tusk.ok("create", "repo", "images")
    async with PfsClient(pfs_url) as client:
        for n in range(205):  # more than two pages of 100
            await client.put_files("images", "master", _one_file(f"/f{n}", b"x" * n))
    rows = (await tusk.ok("list", "commit", "images@master", "-o", "json")).json()
    assert len(rows) == 205 and len({row["id"] for row in rows}) == 205
    assert {"id", "branch", "parent", "started", "finished", "size_bytes", "provenance"} <= set(
        rows[0]
    )
    lines = (await tusk.ok("list", "commit", "images", "--limit", "5")).text.splitlines()
    assert lines[0].split() == ["REPO", "BRANCH", "COMMIT", "FINISHED", "SIZE", "DESCRIPTION"]
    assert len(lines) == 6 and rows[0]["id"] in lines[1]


async def _one_file(path: str, data: bytes) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    async def blocks() -> AsyncIterator[bytes]:
        yield data

    yield path, blocks()
