"""The work counters the services serve to operators (``GET /v1/status``): the same
numbers the cost tests read, so they are metrics, not test instruments."""

from __future__ import annotations

import aiohttp

from shared.api.pfs_client import PfsClient
from tests.fixtures.cluster import Cluster
from tests.fixtures.pfs import RunningPfs
from tests.test_pipelines import files, wait_for_jobs


async def status(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/status") as resp:
        assert resp.status == 200
        body: dict[str, object] = await resp.json()
        return body


async def test_pfs_status_counts_the_file_index_work(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    before = await status(pfs.url)
    await pfs_client.create_repo("counted")
    await pfs_client.put_files("counted", "master", files({"/a": b"1", "/b": b"2"}))
    after = await status(pfs.url)
    index_before, index_after = before["file_index"], after["file_index"]
    assert isinstance(index_before, dict) and isinstance(index_after, dict)
    assert index_after["nodes_written"] > index_before["nodes_written"]
    assert index_after == pfs.service.files.index.counters()
    assert 0 < index_after["cache_bytes"] <= index_after["cache_limit_bytes"]


async def test_scheduler_status_counts_spec_parses(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"1"}))
    spec = {
        "pipeline": {"name": "copy"},
        "transform": {"cmd": ["sh", "-c", 'cp "$words" /pfs/out/']},
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
    }
    await cluster.pps.create_pipeline(spec)
    await wait_for_jobs(cluster, "copy", 1)
    cache = (await status(cluster.config.scheduler_url))["spec_cache"]
    assert cache == {"parses": cluster.engine.specs.parses, "specs": len(cluster.engine.specs)}
    assert cache["specs"] == 1 and cache["parses"] >= 1
