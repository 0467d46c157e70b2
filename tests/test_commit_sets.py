"""Commit sets (Pachyderm 2's global IDs) through the CLI against ``tusk up``: one id names
a user's commit and every output commit computed from it; ``list``, ``inspect``, ``wait``,
``squash`` and ``delete commit ID`` act on the whole set."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.pfs.commit_sets import pending_branches, set_state
from services.pfs.events import commit_payload
from services.scheduler.commit_sets import job_commit_set
from shared.api.pfs_models import CommitInfo
from tests.fixtures.embedded_cluster import EmbeddedCluster, eventually, start_embedded_cluster

ID = "0123456789abcdef0123456789abcdef"
# raw feeds left and right; both reads the two (a diamond); top reads both.
SPECS = """
pipeline: {name: left}
transform: {cmd: [sh, -c, "cp -r /pfs/raw/. /pfs/out/"]}
input: {pfs: {repo: raw, glob: /}}
---
pipeline: {name: right}
transform: {cmd: [sh, -c, "for f in /pfs/raw/*; do cp $f /pfs/out/r-$(basename $f); done"]}
input: {pfs: {repo: raw, glob: /}}
---
pipeline: {name: both}
transform: {cmd: [sh, -c, "cp -r /pfs/left/. /pfs/out/; cp -r /pfs/right/. /pfs/out/"]}
input:
  cross:
    - {pfs: {repo: left, glob: /}}
    - {pfs: {repo: right, glob: /}}
---
pipeline: {name: top}
transform: {cmd: [sh, -c, "ls /pfs/both | wc -l > /pfs/out/count"]}
input: {pfs: {repo: both, glob: /}}
---
pipeline: {name: picky}
transform: {cmd: [sh, -c, "if [ -e /pfs/strict/bad ]; then exit 3; fi; cp -r /pfs/strict/. /pfs/out/"]}
input: {pfs: {repo: strict, glob: /}}
"""


def _commit(repo: str, branch: str | None, error: str | None = None) -> CommitInfo:
    return CommitInfo(ID, repo, branch, None, "finished", "", error=error)


def test_pending_branches_walk_below_the_set_and_stop_at_failures() -> None:
    edges = [
        ("raw", "master", "left", "master"),
        ("raw", "master", "right", "master"),
        ("left", "master", "both", "master"),
        ("right", "master", "both", "master"),
        ("both", "master", "top", "master"),
    ]
    made = [_commit("raw", "master"), _commit("left", "master")]
    assert pending_branches(made, edges) == [
        ("both", "master"),
        ("right", "master"),
        ("top", "master"),
    ]
    assert set_state(made, pending_branches(made, edges)) == "running"
    # right failed: nothing is computed from it; both still waits on left's side.
    failed = [*made, _commit("right", "master", error="boom")]
    assert pending_branches(failed, edges) == [("both", "master"), ("top", "master")]
    assert set_state(failed, []) == "failed"
    # left's head came from raw's set commit already (a pipeline created meanwhile): the
    # set never reaches left, nor through it; both still gets it from right.
    covered = frozenset({("left", "master")})
    assert pending_branches(made[:1], edges, covered) == [
        ("both", "master"),
        ("right", "master"),
        ("top", "master"),
    ]
    assert pending_branches([*made[:1], _commit("right", "master", "x")], edges, covered) == []
    done = [_commit(r, "master") for r in ("raw", "left", "right", "both", "top")]
    assert pending_branches(done, edges) == [] and set_state(done, []) == "finished"


def test_a_jobs_set_is_its_trigger_commit_and_events_carry_it() -> None:
    assert job_commit_set(ID) == ID
    assert job_commit_set(f"branch:raw@master:{ID}:{'e' * 32}") == ID
    assert job_commit_set("create:1") is None and job_commit_set("update:2") is None
    assert commit_payload("commit.finished", _commit("raw", "master")).to_json()["commit_set"] == ID


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    yield from start_embedded_cluster("tusk-sets-")


class Cli:
    def __init__(self, cluster: EmbeddedCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work

    async def ok(self, *args: str) -> str:
        code, out, err = await self.cluster.tusk(*args)
        assert code == 0, f"tusk {' '.join(args)}: {err}"
        return out

    async def json(self, *args: str) -> Any:
        return json.loads(await self.ok(*args, "-o", "json"))

    async def refused(self, *args: str) -> str:
        code, _out, err = await self.cluster.tusk(*args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
        return lines[0]

    async def put(self, target: str, data: bytes) -> str:
        """Put one file; the id of the commit it made."""
        local = self.work / "upload"
        local.write_bytes(data)
        await self.ok("put", "file", target, "-f", str(local))
        repo, rest = target.split("@", 1)
        commit: dict[str, Any] = await self.json(
            "inspect", "commit", f"{repo}@{rest.split(':')[0]}"
        )
        return str(commit["id"])


async def test_one_id_names_the_set_across_the_dag(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    await cluster.healthy()
    cli = Cli(cluster, tmp_path)
    for repo in ("raw", "strict"):
        await cli.ok("create", "repo", repo)
    (tmp_path / "specs.yaml").write_text(SPECS)
    await cli.ok("create", "pipeline", "-f", str(tmp_path / "specs.yaml"))

    # A commit starts a set. Its wait, begun while the commit is still open, returns once
    # the outputs of all four pipelines are in the set: commits that did not exist yet.
    first = (await cli.ok("start", "commit", "raw@master")).strip()
    waiter = asyncio.create_task(cli.json("wait", "commit", first, "--timeout", "60"))
    await asyncio.sleep(1)  # the wait is under way
    waiting_since = datetime.now(UTC)
    (tmp_path / "b").write_bytes(b"bb")
    await cli.ok("put", "file", "raw@master:/b", "-f", str(tmp_path / "b"))
    await cli.ok("finish", "commit", "raw@master")
    waited = await waiter
    made_after = sorted(
        c["repo"] for c in waited["commits"] if datetime.fromisoformat(c["started"]) > waiting_since
    )
    assert made_after == ["both", "left", "right", "top"]
    assert waited["state"] == "finished" and waited["pending"] == []
    repos = sorted(c["repo"] for c in waited["commits"])
    assert repos == ["both", "left", "raw", "right", "top"]
    assert {c["id"] for c in waited["commits"]} == {first}
    # The jobs that made the set, one per pipeline: the diamond's both ran once, reading
    # left and right of the same set.
    jobs = {j["pipeline"]: j for j in waited["jobs"]}
    assert sorted(jobs) == ["both", "left", "right", "top"]
    assert all(j["state"] == "JOB_SUCCESS" for j in jobs.values())
    assert {(c["repo"], c["id"]) for c in jobs["both"]["input_commits"]} == {
        ("left", first),
        ("right", first),
    }
    assert (await cli.ok("get", "file", "top@master:/count")).strip() == "2"
    # Each output's provenance stays per repo: both@ID came from left@ID and right@ID.
    made = await cli.json("inspect", "commit", f"both@{first}")
    assert {(p["repo"], p["id"]) for p in made["direct_provenance"]} == {
        ("left", first),
        ("right", first),
    }
    assert made["full_provenance"][0]["repo"] == "raw"

    listed = await cli.json("list", "commit", first)
    assert sorted(c["repo"] for c in listed) == repos
    table = await cli.ok("inspect", "commit", first)
    assert "Commit Set" in table and f"both@{jobs['both']['id']}" in table
    assert "JOB_SUCCESS" in table

    # A failed job fails the wait with one line naming it; nothing downstream is awaited.
    bad = await cli.put("strict@master:/bad", b"x")
    code, out, err = await cluster.tusk("wait", "commit", bad, "--timeout", "60", "-o", "json")
    assert code == 1, err
    picky = json.loads(out)["jobs"][0]
    print(err.strip())
    assert err.startswith(f"error: commit set {bad} failed: job picky@{picky['id']} JOB_FAILURE")
    assert json.loads(out)["state"] == "failed"

    # delete commit ID: an open set goes whole; a finished one is refused as before.
    opened = (await cli.ok("start", "commit", "raw@master")).strip()
    assert [c["state"] for c in await cli.json("list", "commit", opened)] == ["open"]
    await cli.ok("delete", "commit", opened)
    assert "no commit set" in await cli.refused("inspect", "commit", opened)
    line = await cli.refused("delete", "commit", first)
    assert "only open commits can be deleted" in line

    # squash commit ID: refused while the set holds branch heads (nothing changes), then
    # done whole once a later set exists; every repo keeps its content.
    line = await cli.refused("squash", "commit", first)
    assert "is the head of branch master" in line
    assert len(await cli.json("list", "commit", first)) == 5
    later = await cli.put("raw@master:/c", b"ccc")
    assert (await cli.json("wait", "commit", later, "--timeout", "60"))["state"] == "finished"
    await cli.ok("squash", "commit", first)
    assert "no commit set" in await cli.refused("list", "commit", first)
    assert first not in [c["id"] for c in await cli.json("list", "commit")]
    assert (await cli.ok("get", "file", "both@master:/b")).strip() == "bb"
    assert (await cli.ok("get", "file", "top@master:/count")).strip() == "4"


async def test_a_set_made_before_its_pipeline_whose_first_job_failed_is_finished(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    """A commit made before a pipeline exists: the pipeline's first job (a set of its own)
    read it and failed, so its branch got a failed commit and kept no head. The commit's
    set will reach nothing more there — its wait returns, it does not hang."""
    await cluster.healthy()
    cli = Cli(cluster, tmp_path)
    await cli.ok("create", "repo", "early")
    before = await cli.put("early@master:/x", b"x")
    spec = {
        "pipeline": {"name": "failsfirst"},
        "transform": {"cmd": ["sh", "-c", "exit 3"]},
        "input": {"pfs": {"repo": "early", "glob": "/*"}},
    }
    (tmp_path / "failsfirst.json").write_text(json.dumps(spec))
    await cli.ok("create", "pipeline", "-f", str(tmp_path / "failsfirst.json"))

    async def failed() -> bool:
        jobs = await cli.json("list", "job", "-p", "failsfirst")
        return bool(jobs) and jobs[0]["state"] == "JOB_FAILURE"

    await eventually(failed, 60, "the pipeline's first job failed")
    waited = await cli.json("wait", "commit", before, "--timeout", "20")
    assert waited["state"] == "finished" and waited["pending"] == [], waited
    await cli.ok("delete", "pipeline", "failsfirst")
