"""``tusk`` pipeline, job, datum and logs commands: formatting (fast, in-process), then the
real console script as a subprocess against a real cluster (PFS, PPS, scheduler, workers)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.api.pps_models import JobInfo
from shared.platform.errors import InvalidArgument
from tests.fixtures.cluster import Cluster
from tests.fixtures.parts import require, tusk_script_missing
from tests.test_cli import TUSK, Tusk
from tusk.cli.pipeline_commands import input_summary, job_progress, parse_job_ref

# --- formatting and arguments -----------------------------------------------------------------


def test_input_summary_reads_like_pachctl() -> None:
    assert input_summary({"pfs": {"repo": "words", "glob": "/*"}}) == "words:/*"
    cross = {"cross": [{"pfs": {"repo": "a", "glob": "/*"}}, {"pfs": {"repo": "b", "glob": "/"}}]}
    assert input_summary(cross) == "(a:/* ⨯ b:/)"
    nested = {"union": [cross, {"cron": {"name": "tick", "spec": "@every 1m"}}]}
    assert input_summary(nested) == "((a:/* ⨯ b:/) ∪ cron tick @every 1m)"


def test_job_progress_is_processed_plus_skipped_of_total() -> None:
    job = JobInfo("j", "p", 1, "JOB_SUCCESS", "", data_total=4, data_processed=1, data_skipped=3)
    assert job_progress(job) == "1 + 3 / 4"
    failed = JobInfo("j", "p", 1, "JOB_FAILURE", "", data_total=2, data_failed=1)
    assert job_progress(failed) == "0 + 0 / 2 (1 failed)"


def test_job_refs_need_pipeline_at_job() -> None:
    ref = parse_job_ref("count@4f2a")
    assert (ref.pipeline, ref.job) == ("count", "4f2a")
    for text in ("count", "count@", "bad name@4f2a", "count@a/b"):
        with pytest.raises(InvalidArgument):
            parse_job_ref(text)


# --- end to end -------------------------------------------------------------------------------

COUNT_AND_TOTAL = """\
pipeline:
  name: count
transform:
  cmd: [sh, -c, 'echo "counting $(basename $words)"; wc -w < "$words" | tr -d " " > "/pfs/out/$(basename $words)"']
input:
  pfs: {repo: words, glob: /*}
---
pipeline:
  name: total
transform:
  cmd: [sh, -c, "cat /pfs/count/* | awk '{ s += $1 } END { print s }' > /pfs/out/total"]
input:
  pfs: {repo: count, glob: /}
"""


@pytest.fixture
def tusk(cluster: Cluster, tmp_path: Path) -> Iterator[Tusk]:
    require(tusk_script_missing(), "the tusk console script")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(
        TUSK_HOME=str(tmp_path / "tusk-home"),
        TUSK_PFS_URL=cluster.config.pfs_url,
        TUSK_PPS_URL=cluster.config.pps_url,
    )
    work = tmp_path / "work"
    work.mkdir()
    yield Tusk(env, work)


async def jobs_done(tusk: Tusk, pipeline: str, count: int, timeout: float = 60) -> list[Any]:
    """``list job -p`` until ``count`` jobs exist and all are done; newest first."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = (await tusk.ok("list", "job", "-p", pipeline, "-o", "json")).json()
        if len(jobs) >= count and all(j["finished"] for j in jobs):
            return list(jobs)
        assert time.monotonic() < deadline, f"{pipeline}: jobs not done: {jobs}"
        await asyncio.sleep(0.1)


async def refused(tusk: Tusk, *args: str, stdin: bytes | None = None) -> str:
    """Run a command that must fail: exit 1 and exactly one ``error:`` line, no traceback."""
    ran = await tusk(*args, stdin=stdin)
    assert ran.code == 1, f"tusk {' '.join(args)}: exit {ran.code}, {ran.stderr}"
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ran.stderr
    return lines[0]


async def put(tusk: Tusk, target: str, data: bytes) -> None:
    await tusk.ok("put", "file", target, "-f", "-", stdin=data)


async def test_pipelines_jobs_and_datums_end_to_end(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "words")
    await put(tusk, "words@master:/a", b"one two")
    spec_file = tusk.cwd / "pipelines.yaml"
    spec_file.write_text(COUNT_AND_TOTAL)
    created = await tusk.ok("create", "pipeline", "-f", str(spec_file))
    assert created.stdout == b""

    pipelines = (await tusk.ok("list", "pipeline", "-o", "json")).json()
    assert [p["name"] for p in pipelines] == ["count", "total"]
    assert {"name", "version", "state", "spec", "created", "last_job_state"} <= set(pipelines[0])
    table = (await tusk.ok("list", "pipeline")).text.splitlines()
    assert table[0].split()[:4] == ["NAME", "VERSION", "INPUT", "CREATED"]
    assert any(line.split()[:3] == ["count", "1", "words:/*"] for line in table[1:])

    (job,) = await jobs_done(tusk, "count", 1)
    await jobs_done(tusk, "total", 1)
    assert {"id", "pipeline", "state", "data_processed", "data_skipped", "data_total"} <= set(job)
    assert (job["state"], job["data_processed"], job["data_total"]) == ("JOB_SUCCESS", 1, 1)
    assert (await tusk.ok("get", "file", "total@master:/total")).stdout == b"2\n"

    # One new file: one datum runs, one is skipped.
    await put(tusk, "words@master:/b", b"three four five")
    newest = (await jobs_done(tusk, "count", 2))[0]
    assert (newest["data_processed"], newest["data_skipped"], newest["data_total"]) == (1, 1, 2)
    jobs_table = (await tusk.ok("list", "job", "-p", "count")).text.splitlines()
    assert jobs_table[0].split() == ["ID", "PIPELINE", "STARTED", "DURATION", "PROGRESS", "STATE"]
    assert newest["id"] in jobs_table[1] and "1 + 1 / 2" in jobs_table[1]
    await jobs_done(tusk, "total", 2)
    assert (await tusk.ok("get", "file", "total@master:/total")).stdout == b"5\n"

    # The output commits made from an input commit.
    made = (
        await tusk.ok("list", "commit", "count", "--provenance-of", "words@master", "-o", "json")
    ).json()
    head = (await tusk.ok("inspect", "commit", "count@master", "-o", "json")).json()
    assert [c["id"] for c in made] == [head["id"]] == [newest["output_commit"]]
    # total reads count, which reads words: the walk follows provenance all the way down.
    older = (
        await tusk.ok("list", "commit", "total", "--provenance-of", "words@master^", "-o", "json")
    ).json()
    assert [c["repo"] for c in older] == ["total"]

    # A unique prefix of the job id is enough.
    short = f"count@{newest['id'][:8]}"
    inspected = (await tusk.ok("inspect", "job", short, "-o", "json")).json()
    assert inspected["id"] == newest["id"]
    assert [c["repo"] for c in inspected["input_commits"]] == ["words"]
    waited = (await tusk.ok("wait", "job", short, "-o", "json")).json()
    assert waited["state"] == "JOB_SUCCESS"
    text = (await tusk.ok("inspect", "job", short)).text
    assert "State: JOB_SUCCESS" in text and "1 + 1 / 2" in text

    (datum,) = (await tusk.ok("list", "datum", short, "-o", "json")).json()
    assert {"id", "state", "inputs", "attempts"} <= set(datum)
    assert datum["state"] == "SUCCESS" and datum["inputs"][0]["match"] == "/b"
    datum_table = (await tusk.ok("list", "datum", short)).text.splitlines()
    assert datum_table[0].split() == ["ID", "STATE", "TIME", "INPUT"]
    assert datum_table[1].split()[0] == datum["id"] and datum_table[1].endswith("/b")
    one = (await tusk.ok("inspect", "datum", short, datum["id"][:10], "-o", "json")).json()
    assert one["id"] == datum["id"]
    assert "/b" in (await tusk.ok("inspect", "datum", short, datum["id"])).text

    # Logs: the commands' output, filtered by job and by datum.
    all_lines = (await tusk.ok("logs", "-p", "count")).text.splitlines()
    assert sorted(all_lines) == ["counting a", "counting b"]
    job_lines = (await tusk.ok("logs", "-p", "count", "--job", newest["id"][:8])).text
    assert job_lines.splitlines() == ["counting b"]
    datum_lines = (await tusk.ok("logs", "-p", "count", "--datum", datum["id"], "-o", "json")).text
    (record,) = [json.loads(line) for line in datum_lines.splitlines()]
    assert (record["message"].strip(), record["datum_id"]) == ("counting b", datum["id"])

    # Restarting a datum queues a new job over the latest inputs and prints it.
    restarted = (await tusk.ok("restart", "datum", short, datum["id"], "-o", "json")).json()
    assert restarted["pipeline"] == "count"
    latest = (await jobs_done(tusk, "count", 3))[0]
    assert latest["id"] == restarted["id"] and latest["state"] == "JOB_SUCCESS"
    printed = (await tusk.ok("restart", "datum", short, datum["id"])).text.strip()
    assert printed.startswith("count@") and len(printed) == len("count@") + 32


async def test_restarted_datum_runs_again(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "words")
    await put(tusk, "words@master:/a", b"one two")
    await tusk.ok("create", "pipeline", "-f", "-", stdin=COUNT_AND_TOTAL.split("---")[0].encode())
    (job,) = await jobs_done(tusk, "count", 1)
    (datum,) = (await tusk.ok("list", "datum", f"count@{job['id']}", "-o", "json")).json()
    await tusk.ok("restart", "datum", f"count@{job['id']}", datum["id"])
    latest = (await jobs_done(tusk, "count", 2))[0]
    assert (latest["data_processed"], latest["data_skipped"]) == (1, 0)


async def test_update_history_stop_start_and_delete(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "words")
    await put(tusk, "words@master:/a", b"x y")
    first = COUNT_AND_TOTAL.split("---")[0]
    await tusk.ok("create", "pipeline", "-f", "-", stdin=first.encode())
    await jobs_done(tusk, "count", 1)
    changed = first.replace("wc -w", "wc -c")
    await tusk.ok("update", "pipeline", "-f", "-", "--reprocess", stdin=changed.encode())
    assert (await tusk.ok("inspect", "pipeline", "count", "-o", "json")).json()["version"] == 2
    history = (await tusk.ok("inspect", "pipeline", "count", "--history", "-o", "json")).json()
    assert [v["version"] for v in history] == [1, 2]
    assert "wc -c" in " ".join(history[1]["spec"]["transform"]["cmd"])
    history_table = (await tusk.ok("inspect", "pipeline", "count", "--history")).text.splitlines()
    assert history_table[0].split() == ["VERSION", "CREATED", "INPUT", "TRANSFORM"]
    assert history_table[1].split()[0] == "2"  # newest first
    await jobs_done(tusk, "count", 2)
    assert (await tusk.ok("get", "file", "count@master:/a")).stdout == b"3\n"

    await tusk.ok("stop", "pipeline", "count")
    assert (await tusk.ok("inspect", "pipeline", "count", "-o", "json")).json()["state"] == (
        "PIPELINE_PAUSED"
    )
    assert "State: PIPELINE_PAUSED" in (await tusk.ok("inspect", "pipeline", "count")).text
    await put(tusk, "words@master:/b", b"hello")
    await asyncio.sleep(1)
    assert len((await tusk.ok("list", "job", "-p", "count", "-o", "json")).json()) == 2
    await tusk.ok("start", "pipeline", "count")
    await jobs_done(tusk, "count", 3)
    assert (await tusk.ok("get", "file", "count@master:/b")).stdout == b"5\n"

    await tusk.ok("delete", "pipeline", "count", "--keep-repo")
    assert (await tusk.ok("list", "pipeline", "-o", "json")).json() == []
    repos = {r["name"] for r in (await tusk.ok("list", "repo", "-o", "json")).json()}
    assert repos == {"words", "count"}
    assert "not found" in await refused(tusk, "inspect", "pipeline", "count")


async def test_bad_specs_and_arguments_are_one_line_and_create_nothing(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "words")
    bad = tusk.cwd / "bad.yaml"
    bad.write_text(COUNT_AND_TOTAL.replace("glob: /*}", 'glob: "/[a"}'))
    line = await refused(tusk, "create", "pipeline", "-f", str(bad))
    assert "document 1" in line and "input.pfs.glob" in line
    # The first document is fine, the second is not: neither is created.
    second_bad = tusk.cwd / "second.yaml"
    second_bad.write_text(COUNT_AND_TOTAL.replace('  cmd: [sh, -c, "cat', '  cmdd: [sh, -c, "cat'))
    line = await refused(tusk, "create", "pipeline", "-f", str(second_bad))
    assert "document 2" in line and "did you mean 'cmd'" in line
    assert "invalid YAML at line" in await refused(
        tusk, "create", "pipeline", "-f", "-", stdin=b"pipeline: [\n"
    )
    missing_repo = COUNT_AND_TOTAL.split("---")[0].replace("repo: words", "repo: nope")
    line = await refused(tusk, "create", "pipeline", "-f", "-", stdin=missing_repo.encode())
    assert "input repo nope not found" in line
    assert "no such file" in (await refused(tusk, "create", "pipeline", "-f", "nope.yaml")).lower()
    assert (await tusk.ok("list", "pipeline", "-o", "json")).json() == []
    repos = [r["name"] for r in (await tusk.ok("list", "repo", "-o", "json")).json()]
    assert repos == ["words"]

    assert "PIPELINE@JOB" in await refused(tusk, "inspect", "job", "count")
    assert "not found" in await refused(tusk, "list", "job", "-p", "nope")
    assert "not found" in await refused(tusk, "inspect", "pipeline", "nope")
    assert "not found" in await refused(tusk, "logs", "-p", "nope")
    await tusk.ok("create", "pipeline", "-f", "-", stdin=COUNT_AND_TOTAL.split("---")[0].encode())
    assert "already exists" in await refused(
        tusk, "create", "pipeline", "-f", "-", stdin=COUNT_AND_TOTAL.split("---")[0].encode()
    )
    assert "not found" in await refused(tusk, "inspect", "job", "count@0000000")


async def test_logs_follow_prints_new_lines_until_interrupted(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "words")
    await tusk.ok("create", "pipeline", "-f", "-", stdin=COUNT_AND_TOTAL.split("---")[0].encode())
    process = await asyncio.create_subprocess_exec(
        str(TUSK),
        *("logs", "-p", "count", "-f"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=tusk.env,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        await put(tusk, "words@master:/first", b"a")
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"counting first\n"
        await put(tusk, "words@master:/second", b"b")
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"counting second\n"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    assert (await process.stderr.read()) == b""
