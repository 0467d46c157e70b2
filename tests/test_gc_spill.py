"""The collector's chunk marks bounded in memory (issue #14, "scales to 100 million
objects"): with room for 50 marks, a collection over hundreds of live and garbage chunks
spills sorted runs to disk, holds no more than 50 at once, judges every chunk by a merge
join with the store's listing (local store and SeaweedFS S3), deletes exactly the
garbage and leaves no run file behind; a listing out of key order stops the sweep."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.pfs.marks import ChunkMarks
from shared.api.pfs_client import PfsClient
from shared.platform.config import Config
from shared.platform.errors import Internal
from shared.storage.chunking import FileEntry, write_files
from tests.fixtures.pfs import RunningPfs

LIMIT = 50


@pytest.fixture(params=["local", "s3"])
def tusk_config(request: pytest.FixtureRequest, tusk_config: Config, tmp_path: Path) -> Config:
    config = tusk_config.replace(
        gc_reference_owners=(),
        gc_interval_s=0.0,
        gc_mark_chunks_in_memory=LIMIT,
        gc_spill_dir=str(tmp_path / "spill"),
    )
    (tmp_path / "spill").mkdir()
    if request.param == "s3":
        s3: Config = request.getfixturevalue("s3_config")
        config = config.replace(object_store="s3", s3=s3.s3)
    return config


def small(seed: int) -> bytes:
    return random.Random(seed).randbytes(1500)


async def land(pfs: RunningPfs, client: PfsClient, repo: str, items: dict[str, bytes]) -> None:
    """Each file a pack of its own (one chunk each, as a worker stores datum outputs),
    landed by reference in one commit."""
    entries: list[tuple[str, FileEntry | None]] = [
        (path, (await write_files(pfs.service.store, [data]))[0]) for path, data in items.items()
    ]
    await client.put_entries(repo, "master", entries)


async def chunk_keys(pfs: RunningPfs) -> set[str]:
    return {k async for k in pfs.service.store.list("chunks/")}


async def test_marks_beyond_the_bound_spill_to_sorted_runs_and_the_sweep_stays_exact(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    live = {f"/l{i:03d}": small(i) for i in range(300)}
    garbage = {f"/g{i:03d}": small(1000 + i) for i in range(120)}
    async with PfsClient(pfs.url) as client:
        await client.create_repo("keep")
        await land(pfs, client, "keep", live)
        live_chunks = await chunk_keys(pfs)
        await client.create_repo("gone")
        await land(pfs, client, "gone", garbage)
        await client.delete_repo("gone")
        before = await chunk_keys(pfs)
        stale = tmp_path / "spill" / "tusk-gc-marks-killed"  # as a kill -9 leaves one
        stale.mkdir()
        (stale / "run-000000").write_bytes(bytes(64))
        report = await client.garbage_collect(grace_s=0)
        after = await chunk_keys(pfs)
        again = await client.garbage_collect(grace_s=0)
        contents = {
            p: b"".join([b async for b in client.get_file("keep", "master", p)]) for p in live
        }

    assert len(live_chunks) == len(live) and len(before - live_chunks) == len(garbage)
    assert report.chunk_marks_peak <= LIMIT
    assert report.chunk_mark_runs >= len(live) // LIMIT
    assert after == live_chunks  # exactly the garbage chunks went
    assert report.objects >= len(garbage)  # and the deleted repo's index nodes
    assert again.objects == 0 and again.live_objects == report.live_objects
    assert contents == live
    assert list((tmp_path / "spill").iterdir()) == []  # its own runs and the killed run's


async def test_a_listing_out_of_key_order_stops_the_merge_join(tmp_path: Path) -> None:
    marks = ChunkMarks(2, str(tmp_path))
    for digest in (bytes([5]) * 32, bytes([1]) * 32, bytes([3]) * 32, bytes([1]) * 32):
        marks.add(digest)
        if marks.full:
            await marks.spill()
    runs = marks.runs
    cursor = marks.cursor()
    try:
        answers = [bytes([n]) * 32 in cursor for n in (1, 2, 3, 5)]
        with pytest.raises(Internal, match="not in key order"):
            _ = bytes([4]) * 32 in cursor
    finally:
        marks.close()

    assert answers == [True, False, True, True]
    assert runs == 2 and not any(tmp_path.iterdir())  # noqa: ASYNC240 (a local directory)
