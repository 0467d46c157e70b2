"""What a datum's /pfs/out is stored as: files, symlinks as Pachyderm stores them, and
the entries that fail the datum instead (real bubblewrap, a real local store)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.scheduler.datum_output import MAX_HOPS, gather_output
from services.scheduler.datum_runner import run_datum
from services.scheduler.tasks import DatumResult
from shared.storage.chunking import FileEntry
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex
from tests.fixtures.counting_store import CountingStore
from tests.test_datum_runner import leftovers, make_input, make_task, needs_bwrap, output_files


async def output_entries(store: CountingStore, result: DatumResult) -> dict[str, FileEntry]:
    """The stored output's file entries by path."""
    return {
        item.key: from_index_entry(item) async for item in FileIndex(store).scan(result.output_root)
    }


@needs_bwrap
async def test_symlink_to_an_input_file_is_stored_by_reference(
    store: CountingStore, workdir: Path
) -> None:
    source = await make_input(store, {"/img/cat.png": b"CAT" * 100_000})
    store.reset()
    script = "ln -s /pfs/in/img/cat.png /pfs/out/cat.png && ln -s ../in/img/cat.png /pfs/out/rel"
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    assert (result.state, result.error) == ("SUCCESS", None)
    entries = await output_entries(store, result)
    original = source.files[0].entry
    assert entries == {"/cat.png": original, "/rel": original}
    assert entries["/cat.png"].chunks == original.chunks
    # No byte copied: nothing uploaded but the index node.
    assert result.upload_bytes == 0
    assert store.count_puts("chunks/") == 0
    assert result.output_bytes == 2 * original.size
    assert leftovers(workdir) == []


@needs_bwrap
async def test_symlink_to_an_input_directory_stores_its_subtree_by_reference(
    store: CountingStore, workdir: Path
) -> None:
    source = await make_input(
        store, {"/img/a.png": b"A", "/img/deep/b.png": b"B", "/other.txt": b"O"}
    )
    script = "ln -s /pfs/in/img /pfs/out/pictures && ln -s /pfs/in /pfs/out/all"
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    assert result.state == "SUCCESS", result.error
    by_path = {f.path: f.entry for f in source.files}
    assert await output_entries(store, result) == {
        "/all/img/a.png": by_path["/img/a.png"],
        "/all/img/deep/b.png": by_path["/img/deep/b.png"],
        "/all/other.txt": by_path["/other.txt"],
        "/pictures/a.png": by_path["/img/a.png"],
        "/pictures/deep/b.png": by_path["/img/deep/b.png"],
    }


@needs_bwrap
async def test_symlinks_inside_out_store_their_targets_content(
    store: CountingStore, workdir: Path
) -> None:
    script = (
        "mkdir -p /pfs/out/dir/sub && echo real > /pfs/out/dir/sub/real && "
        "ln -s dir/sub/real /pfs/out/file-link && ln -s /pfs/out/dir /pfs/out/dir-link && "
        "ln -s file-link /pfs/out/chain && ln -s ../../dir/sub/real /pfs/out/dir/sub/up"
    )
    result = await run_datum(store, make_task([], script), workdir=workdir)
    assert result.state == "SUCCESS", result.error
    assert await output_files(store, result) == {
        "/chain": b"real\n",
        "/dir-link/sub/real": b"real\n",
        "/dir-link/sub/up": b"real\n",
        "/dir/sub/real": b"real\n",
        "/dir/sub/up": b"real\n",
        "/file-link": b"real\n",
    }


@needs_bwrap
async def test_symlink_to_an_empty_files_input_stores_the_real_file(
    store: CountingStore, workdir: Path
) -> None:
    """As in Pachyderm's shuffle example: the command sees empty files, and linking one
    stores the real file without a byte downloaded."""
    source = await make_input(store, {"/big.bin": b"x" * 5000}, empty_files=True)
    script = "wc -c < /pfs/in/big.bin > /pfs/out/size && ln -s /pfs/in/big.bin /pfs/out/big"
    result = await run_datum(store, make_task([source], script), workdir=workdir)
    assert await output_files(store, result) == {"/big": b"x" * 5000, "/size": b"0\n"}
    assert (await output_entries(store, result))["/big"] == source.files[0].entry
    assert result.download_bytes == 0


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (
            "ln -s /etc/passwd /pfs/out/link",
            "/pfs/out/link: symlink to /etc/passwd, outside the datum's inputs and /pfs/out",
        ),
        (
            "ln -s ../../../etc/passwd /pfs/out/link",
            "/pfs/out/link: symlink to ../../../etc/passwd, outside the datum's inputs and "
            "/pfs/out",
        ),
        (
            "echo x > /tmp/x; ln -s /tmp/x /pfs/out/link",
            "/pfs/out/link: symlink to /tmp/x, outside the datum's inputs and /pfs/out",
        ),
        (
            "ln -s /pfs/in/../../etc/shadow /pfs/out/link",
            "/pfs/out/link: symlink to /pfs/in/../../etc/shadow, outside the datum's inputs "
            "and /pfs/out",
        ),
        (
            "ln -s / /pfs/out/link",
            "/pfs/out/link: symlink to /, outside the datum's inputs and /pfs/out",
        ),
        (
            "ln -s /pfs /pfs/out/link",
            "/pfs/out/link: symlink to /pfs, outside the datum's inputs and /pfs/out",
        ),
        (
            "ln -s /pfs/in/nothing /pfs/out/link",
            "/pfs/out/link: symlink to /pfs/in/nothing, which cannot be followed: "
            "it does not exist",
        ),
        (
            "ln -s /pfs/in/a.txt/x /pfs/out/link",
            "/pfs/out/link: symlink to /pfs/in/a.txt/x, which cannot be followed: "
            "a file is used as a directory",
        ),
        (
            "ln -s b /pfs/out/a; ln -s a /pfs/out/b",
            "/pfs/out/a: symlink to b, which cannot be followed: "
            f"more than {MAX_HOPS} symlinks deep (a loop)",
        ),
        (
            "mkdir /pfs/out/d; ln -s .. /pfs/out/d/up",
            "/pfs/out/d/up: symlink to .. contains itself (a loop)",
        ),
        (
            "ln -s /pfs/out /pfs/out/me",
            "/pfs/out/me: symlink to /pfs/out contains itself (a loop)",
        ),
        ("mkfifo /pfs/out/fifo", "/pfs/out/fifo: a FIFO is not a regular file"),
        (
            "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('/pfs/out/sock')\"",
            "/pfs/out/sock: a socket is not a regular file",
        ),
        ("touch \"/pfs/out/bad-$(printf '\\377')\"", "/pfs/out/bad-\\xff: its name is not UTF-8"),
        (
            "cd /pfs/out; i=0; while [ $i -lt 2100 ]; do mkdir a && cd a; i=$((i+1)); done",
            "/pfs/out" + "/a" * 50 + "..." + "/a" * 50 + ": its path is too long for the worker "
            "to read",
        ),
        (
            "touch \"/pfs/out/two$(printf '\\nlines')\"",
            "/pfs/out/two\\nlines: its name contains a line break",
        ),
    ],
)
@needs_bwrap
async def test_outputs_that_cannot_be_stored_fail_the_datum_naming_the_path(
    store: CountingStore, workdir: Path, script: str, error: str
) -> None:
    source = await make_input(store, {"/a.txt": b"a"})
    store.reset()
    task = make_task([source], f"echo fine > /pfs/out/fine; {script}")
    result = await run_datum(store, task, workdir=workdir)
    assert (result.state, result.error) == ("FAILED", error)
    assert f"[tusk] cannot store {error}\n" in result.logs
    assert (result.output_root, result.output_files) == (None, 0)
    assert store.count_puts() == 0
    assert leftovers(workdir) == []


@needs_bwrap
async def test_many_bad_outputs_keep_the_logs_bounded(store: CountingStore, workdir: Path) -> None:
    script = "i=0; while [ $i -lt 50 ]; do ln -s /etc/passwd /pfs/out/l$i; i=$((i+1)); done"
    result = await run_datum(store, make_task([], script), workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == (
        "/pfs/out/l0: symlink to /etc/passwd, outside the datum's inputs and /pfs/out"
    )
    assert result.logs.count("[tusk] cannot store") == 20
    assert "[tusk] ... and 30 more entries of /pfs/out\n" in result.logs


@needs_bwrap
async def test_symlinks_that_double_a_tree_at_each_level_are_bounded(
    store: CountingStore, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.scheduler.datum_output.MAX_LINKED_FILES", 100)
    # Level n holds two links to level n-1: 2^12 paths from 13 directories.
    script = (
        "mkdir /pfs/out/l0 && echo x > /pfs/out/l0/f && i=1; while [ $i -le 12 ]; do "
        "mkdir /pfs/out/l$i; ln -s ../l$((i-1)) /pfs/out/l$i/a; ln -s ../l$((i-1)) /pfs/out/l$i/b; "
        "i=$((i+1)); done"
    )
    result = await run_datum(store, make_task([], script), workdir=workdir)
    assert result.state == "FAILED"
    assert "more than 100 files reached through symlinked directories" in (result.error or "")


def test_a_device_file_in_out_is_refused(tmp_path: Path) -> None:
    """The sandbox cannot make device files (no CAP_MKNOD in its user namespace); a
    worker running datums otherwise (pods) could still meet one."""
    out = tmp_path / "out"
    out.mkdir()
    os.mknod(out / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (out / "ok").write_text("ok")
    gathered = gather_output(out, {})
    assert [key for key, _ in gathered.files] == ["/ok"]
    assert [p.line for p in gathered.problems] == [
        "/pfs/out/null: a device file is not a regular file"
    ]
