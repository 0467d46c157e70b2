"""``tusk stop job`` through the installed script against a real cluster (PFS, PPS, scheduler)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from shared.api.pps_client import PpsClient
from tests.test_cli import Tusk
from tests.test_cli_pipelines import put, refused, tusk  # noqa: F401 - the cluster's tusk fixture

SLOW = """
pipeline:
  name: slow
transform:
  cmd: [sh, -c, "if [ -e /pfs/in/slow ]; then sleep 120; fi; cp -r /pfs/in/. /pfs/out/"]
input:
  pfs: {repo: in, glob: /*}
"""


async def job_in_state(cli: Tusk, pipeline: str, state: str, count: int) -> Any:
    """The newest job once ``count`` jobs exist and the newest one is in ``state``."""
    deadline = time.monotonic() + 60
    while True:
        jobs = (await cli.ok("list", "job", "-p", pipeline, "-o", "json")).json()
        if len(jobs) >= count and jobs[0]["state"] == state:
            return jobs[0]
        assert time.monotonic() < deadline, f"{pipeline}: no job {state}: {jobs}"
        await asyncio.sleep(0.2)


async def test_stop_job_kills_it_and_keeps_the_last_good_output(tusk: Tusk) -> None:  # noqa: F811
    await tusk.ok("create", "repo", "in")
    await put(tusk, "in@master:/quick", b"fine\n")
    for name in ("a", "b", "c"):
        await put(tusk, f"in@master:/{name}", name.encode())
    spec = tusk.cwd / "slow.yaml"
    spec.write_text(SLOW)
    await tusk.ok("create", "pipeline", "-f", str(spec))
    good = await job_in_state(tusk, "slow", "JOB_SUCCESS", 1)
    head = (await tusk.ok("inspect", "commit", "slow@master", "-o", "json")).json()["id"]
    assert head == good["output_commit"]

    await put(tusk, "in@master:/slow", b"takes long\n")
    running = await job_in_state(tusk, "slow", "JOB_RUNNING", 2)
    started = time.monotonic()
    stopped = (await tusk.ok("stop", "job", f"slow@{running['id']}", "-o", "json")).json()
    assert time.monotonic() - started < 20
    assert stopped["state"] == "JOB_KILLED" and stopped["reason"] == "stopped by the user"

    killed = (
        await tusk.ok("inspect", "commit", f"slow@{running['output_commit']}", "-o", "json")
    ).json()
    assert killed["state"] == "finished" and killed["error"] == "stopped by the user"
    # The branch keeps its last good commit: the killed output is not readable as master.
    assert (await tusk.ok("get", "file", "slow@master:/quick")).stdout == b"fine\n"
    assert "slow" not in [
        f["path"] for f in (await tusk.ok("list", "file", "slow@master", "-o", "json")).json()
    ]
    line = await refused(tusk, "stop", "job", f"slow@{running['id']}")
    assert "already ended JOB_KILLED" in line
    # The pipeline goes on: the next commit makes a new job.
    await tusk.ok("delete", "file", "in@master:/slow")
    newest = await job_in_state(tusk, "slow", "JOB_SUCCESS", 3)
    # --all lists the skipped datums of any job: the killed one skipped the four current.
    listed = (await tusk.ok("list", "datum", f"slow@{running['id']}", "--all", "-o", "json")).json()
    assert sorted(d["state"] for d in listed) == ["FAILED"] + ["SKIPPED"] * 4

    # delete job: a finished job and its datum records go; the newest success stays.
    assert (await tusk.ok("list", "datum", f"slow@{running['id']}", "-o", "json")).json()
    await tusk.ok("delete", "job", f"slow@{running['id']}")
    ids = [j["id"] for j in (await tusk.ok("list", "job", "-p", "slow", "-o", "json")).json()]
    assert ids == [newest["id"], good["id"]]
    assert "not found" in await refused(tusk, "list", "datum", f"slow@{running['id']}")
    line = await refused(tusk, "delete", "job", f"slow@{newest['id']}")
    assert "newest successful job" in line
    await tusk.ok("delete", "job", f"slow@{good['id']}")
    assert (await tusk.ok("get", "file", "slow@master:/quick")).stdout == b"fine\n"

    # list datum --all: the newest job ran nothing and skipped the four current datums.
    assert (await tusk.ok("list", "datum", f"slow@{newest['id']}", "-o", "json")).json() == []
    listed = (await tusk.ok("list", "datum", f"slow@{newest['id']}", "--all", "-o", "json")).json()
    assert [d["state"] for d in listed] == ["SKIPPED"] * 4
    assert [d["id"] for d in listed] == sorted(d["id"] for d in listed)
    table = (await tusk.ok("list", "datum", f"slow@{newest['id']}", "--all")).text.splitlines()
    assert table[0].split() == ["ID", "STATE", "TIME", "INPUT"] and len(table) == 5
    raw = (await tusk.ok("list", "datum", f"slow@{newest['id']}", "--all", "--raw")).text
    assert [json.loads(line) for line in raw.splitlines()] == listed
    async with PpsClient(tusk.env["TUSK_PPS_URL"]) as pps:  # one datum per page
        paged = [d.id async for d in pps.iter_datums("slow", newest["id"], all_=True, page=1)]
    assert paged == [d["id"] for d in listed]
