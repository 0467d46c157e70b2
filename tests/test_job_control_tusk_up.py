"""``tusk stop job`` against ``tusk up``: the job's running datum processes are killed (not
left to run out their time), the job ends JOB_KILLED, its output commit is finished with
that error and the output branch keeps its last good commit."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.embedded_cluster import EmbeddedCluster, command_of, start_embedded_cluster

# A sleep no other process on the machine runs (the pid in its fraction: other runs of
# the suite may share the machine): the datum's process, found in /proc.
MARK = f"sleep 287.{os.getpid()}"
SLOW = f"""
pipeline: {{name: slow}}
transform: {{cmd: [sh, -c, "if [ -e /pfs/in/slow ]; then {MARK}; fi; cp -r /pfs/in/. /pfs/out/"]}}
input: {{pfs: {{repo: in, glob: /*}}}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    yield from start_embedded_cluster("tusk-stop-")


def sleeping() -> list[int]:
    """Pids of the slow datum's command."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and command_of(int(entry.name)).strip() == MARK.encode():
            found.append(int(entry.name))
    return found


async def until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while not (value := await check()):
        assert time.monotonic() < deadline, f"not after {within} s: {what}"
        await asyncio.sleep(0.2)
    return value


async def test_stop_job_kills_its_running_datums(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    await cluster.healthy()

    async def ok(*args: str) -> str:
        code, out, err = await cluster.tusk(*args)
        assert code == 0, f"tusk {' '.join(args)}: {err}"
        return out

    async def jobs() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            await ok("list", "job", "-p", "slow", "-o", "json")
        )
        return found

    for name, text in (("quick", "fine\n"), ("slow", "takes long\n")):
        (tmp_path / name).write_text(text)
    await ok("create", "repo", "in")
    await ok("put", "file", "in@master:/quick", "-f", str(tmp_path / "quick"))
    (tmp_path / "slow.yaml").write_text(SLOW)
    await ok("create", "pipeline", "-f", str(tmp_path / "slow.yaml"))

    async def first_done() -> bool:
        listed = await jobs()
        return bool(listed) and listed[0]["state"] == "JOB_SUCCESS"

    await until(first_done, 60, "the first job succeeds")
    await ok("put", "file", "in@master:/slow", "-f", str(tmp_path / "slow"))
    started = json.loads(await ok("inspect", "commit", "in@master", "-o", "json"))["id"]

    async def running() -> bool:
        return bool(sleeping())

    await until(running, 60, "the slow datum runs")
    job = (await jobs())[0]
    assert job["state"] == "JOB_RUNNING"
    stopping = time.monotonic()
    stopped = json.loads(await ok("stop", "job", f"slow@{job['id']}", "-o", "json"))
    assert stopped["state"] == "JOB_KILLED"

    async def gone() -> bool:
        return not sleeping()

    await until(gone, 15, "the killed job's datum process is gone")
    print(f"stop job to datum process gone: {time.monotonic() - stopping:.2f} s")

    killed = json.loads(await ok("inspect", "commit", f"slow@{started}", "-o", "json"))
    assert killed["state"] == "finished" and killed["error"] == "stopped by the user"
    assert (await ok("get", "file", "slow@master:/quick")) == "fine\n"
    # list datum --all of this (not the newest successful) job: the datum it ran, killed,
    # and the one it skipped.
    listed = json.loads(await ok("list", "datum", f"slow@{job['id']}", "--all", "-o", "json"))
    assert sorted(d["state"] for d in listed) == ["FAILED", "SKIPPED"]
    code, _out, err = await cluster.tusk("wait", "commit", started, "--timeout", "30")
    assert code == 1 and f"job slow@{job['id']} JOB_KILLED: stopped by the user" in err, err
