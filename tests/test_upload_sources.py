"""What ``put file`` reads: the tree walk and the upload stream's small-file path (issue #12).

A file of at most 1 MiB is read in one call and handed to the encoder as bytes; bigger
files, stdin and URLs stay streams of blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.platform.errors import InvalidArgument
from tusk.cli.args import parse_target
from tusk.cli.sources import BLOCK_SIZE, UploadStream, plan_uploads


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    (root / "b" / "x.bin").write_bytes(b"xx")
    (root / "b" / "deep" / "y.bin").write_bytes(b"yyy")
    (root / "big.bin").write_bytes(os.urandom(BLOCK_SIZE + 1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hidden.txt").write_text("not uploaded")
    (root / "link-to-file").symlink_to(root / "a.txt")
    (root / "link-to-dir").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    return root


def test_the_walk_follows_file_links_not_directory_links_and_keeps_sizes(tree: Path) -> None:
    plan = plan_uploads(parse_target("r@master:/in"), [str(tree)], recursive=True)
    assert [(u.dst, u.size) for u in plan] == [
        ("/in/a.txt", 1),
        ("/in/b/deep/y.bin", 3),
        ("/in/b/x.bin", 2),
        ("/in/big.bin", BLOCK_SIZE + 1),
        ("/in/link-to-file", 1),
    ]


async def _drain(stream: UploadStream) -> list[tuple[str, str, bytes]]:
    """(path, how the content came: bytes or blocks, the content)."""
    out = []
    async for path, content in stream.files():
        if isinstance(content, bytes):
            out.append((path, "bytes", content))
        else:
            out.append((path, "blocks", b"".join([b async for b in content])))
    return out


async def test_small_files_go_as_bytes_and_big_ones_as_blocks(tree: Path) -> None:
    plan = plan_uploads(parse_target("r@master:/in"), [str(tree)], recursive=True)
    counted: list[int] = []
    sent = await _drain(UploadStream(plan, advance=counted.append))
    assert [(path, how) for path, how, _ in sent] == [
        ("/in/a.txt", "bytes"),
        ("/in/b/deep/y.bin", "bytes"),
        ("/in/b/x.bin", "bytes"),
        ("/in/big.bin", "blocks"),
        ("/in/link-to-file", "bytes"),
    ]
    assert sent[3][2] == (tree / "big.bin").read_bytes()
    assert sum(counted) == sum(len(data) for _, _, data in sent)


async def test_a_file_that_grew_after_planning_is_sent_whole(tree: Path) -> None:
    plan = plan_uploads(parse_target("r@master:/in"), [str(tree / "a.txt")], recursive=False)
    (tree / "a.txt").write_bytes(b"a" * 5000)  # planned at 1 byte
    assert await _drain(UploadStream(plan)) == [("/in", "blocks", b"a" * 5000)]


async def test_a_small_file_that_vanished_is_one_clear_error(tree: Path) -> None:
    plan = plan_uploads(parse_target("r@master:/in"), [str(tree)], recursive=True)
    (tree / "b" / "x.bin").unlink()
    stream = UploadStream(plan)
    with pytest.raises(InvalidArgument, match=r"x\.bin: No such file"):
        await _drain(stream)
    assert stream.failure is not None
