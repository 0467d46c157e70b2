"""Pachyderm's own spec shapes and every datum fault, through real jobs (issue #9).

Real services, real workers in real bubblewrap sandboxes (``tests.fixtures.cluster``):
a datum with several parts of one input runs; output symlinks are stored as Pachyderm
stores them; anything wrong with one datum ends that datum FAILED with one line, the
job reaches a final state, and no worker restarts.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.scheduler.tasks import DatumTask, DatumTaskInput, task_envelope
from shared.api.pps_models import JobInfo
from shared.platform.bus import connect, tasks_subject
from shared.storage.chunking import FileEntry, chunk_key
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex
from shared.storage.objstore import open_object_store
from tests.fixtures.cluster import Cluster
from tests.test_pipelines import files, read, wait_for_jobs

LAB_GROUP: dict[str, Any] = {
    "pipeline": {"name": "bypatient"},
    "transform": {
        "cmd": [
            "sh",
            "-c",
            'key=$PACH_DATUM_labresults_GROUP_BY; (cd /pfs/labresults && ls) > /pfs/out/"$key"',
        ]
    },
    "input": {
        "group": [{"pfs": {"repo": "labresults", "glob": "/*-PATID(*)-*.txt", "group_by": "$1"}}]
    },
}


def one_datum_pipeline(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A pipeline reading repo ``words`` whole (one datum) and running ``script``."""
    return {
        "pipeline": {"name": name},
        "transform": {"cmd": ["sh", "-c", script]},
        "input": {"pfs": {"repo": "words", "glob": "/"}},
        **extra,
    }


async def words(cluster: Cluster, items: dict[str, bytes]) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files(items))


async def entries(cluster: Cluster, repo: str) -> dict[str, FileEntry]:
    """The file entries of ``repo@master``, read from its commit's index."""
    root = (await cluster.pfs.inspect_commit(repo, "master")).index_root
    async with open_object_store(cluster.config) as store:
        return {item.key: from_index_entry(item) async for item in FileIndex(store).scan(root)}


def restarts(cluster: Cluster, pipeline: str) -> int:
    (status,) = [s for s in cluster.backend.status() if s["pipeline"] == pipeline]
    return int(status["restarts"])


async def failed_job(cluster: Cluster, pipeline: str) -> tuple[JobInfo, str]:
    """The pipeline's one job, which must have failed, and its one failed datum's error."""
    (job,) = await wait_for_jobs(cluster, pipeline, 1, timeout=90)
    assert job.state == "JOB_FAILURE", job
    datums = await cluster.pps.list_datums(pipeline, job.id)
    failed = [d for d in datums if d.state == "FAILED"]
    assert len(failed) == 1, datums
    assert failed[0].error is not None
    assert failed[0].error in (job.reason or "")
    assert restarts(cluster, pipeline) == 0
    return job, failed[0].error


# -- several parts of one input --------------------------------------------------------


async def test_group_of_two_files_of_one_input_is_one_datum_seeing_both(
    cluster: Cluster,
) -> None:
    await cluster.pfs.create_repo("labresults")
    await cluster.pfs.put_files(
        "labresults",
        "master",
        files({"/T1-PATID1-A.txt": b"a", "/T2-PATID1-B.txt": b"b", "/T3-PATID2-C.txt": b"c"}),
    )
    await cluster.pps.create_pipeline(LAB_GROUP)
    (job,) = await wait_for_jobs(cluster, "bypatient", 1, timeout=90)
    assert job.state == "JOB_SUCCESS", job
    assert (job.data_total, job.data_processed) == (2, 2)
    assert await read(cluster, "bypatient", "/1") == b"T1-PATID1-A.txt\nT2-PATID1-B.txt\n"
    assert await read(cluster, "bypatient", "/2") == b"T3-PATID2-C.txt\n"
    assert restarts(cluster, "bypatient") == 0


async def test_a_cross_of_an_input_with_itself_under_two_names(cluster: Cluster) -> None:
    await words(cluster, {"/a": b"1", "/b": b"2"})
    await cluster.pps.create_pipeline(
        {
            "pipeline": {"name": "pairs"},
            "transform": {
                "cmd": [
                    "sh",
                    "-c",
                    'cat "$left" "$right" > /pfs/out/$(basename $left)$(basename $right)',
                ]
            },
            "input": {
                "cross": [
                    {"pfs": {"repo": "words", "glob": "/*", "name": "left"}},
                    {"pfs": {"repo": "words", "glob": "/*", "name": "right"}},
                ]
            },
        }
    )
    (job,) = await wait_for_jobs(cluster, "pairs", 1, timeout=90)
    assert job.state == "JOB_SUCCESS", job
    listing = [f.path async for f in cluster.pfs.iter_files("pairs", "master")]
    assert listing == ["/aa", "/ab", "/ba", "/bb"]
    assert await read(cluster, "pairs", "/ab") == b"12"


# -- output symlinks --------------------------------------------------------------------


async def test_output_symlinks_are_stored_as_pachyderm_stores_them(cluster: Cluster) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: several chunks
    await words(cluster, {"/img/cat.png": big, "/img/deep/dog.png": b"DOG", "/notes": b"n"})
    script = (
        "ln -s /pfs/words/img/cat.png /pfs/out/cat.png && "
        "ln -s /pfs/words/img /pfs/out/images && "
        "echo made > /pfs/out/made && ln -s ../out/made /pfs/out/made-link"
    )
    await cluster.pps.create_pipeline(one_datum_pipeline("links", script))
    (job,) = await wait_for_jobs(cluster, "links", 1, timeout=90)
    assert job.state == "JOB_SUCCESS", job
    stored, inputs = await entries(cluster, "links"), await entries(cluster, "words")
    assert sorted(stored) == [
        "/cat.png",
        "/images/cat.png",
        "/images/deep/dog.png",
        "/made",
        "/made-link",
    ]
    # By reference: the very chunks of the input files, no copy.
    assert stored["/cat.png"].chunks == inputs["/img/cat.png"].chunks
    assert stored["/images/cat.png"] == inputs["/img/cat.png"]
    assert stored["/images/deep/dog.png"] == inputs["/img/deep/dog.png"]
    assert await read(cluster, "links", "/cat.png") == big
    assert await read(cluster, "links", "/made-link") == b"made\n"


async def test_a_symlink_to_a_host_file_fails_the_datum_and_the_job_naming_the_path(
    cluster: Cluster,
) -> None:
    await words(cluster, {"/a": b"a"})
    script = "echo fine > /pfs/out/fine; ln -s /etc/passwd /pfs/out/passwd"
    await cluster.pps.create_pipeline(one_datum_pipeline("leak", script))
    job, error = await failed_job(cluster, "leak")
    assert error == (
        "/pfs/out/passwd: symlink to /etc/passwd, outside the datum's inputs and /pfs/out"
    )
    (datum,) = await cluster.pps.list_datums("leak", job.id)
    assert datum.attempts == 3  # datum_tries: the default 3
    # Nothing of it was stored: the output commit is empty and failed.
    output = await cluster.pfs.inspect_commit("leak", job.output_commit or "")
    assert output.error == job.reason
    logs = [line.message for line in await cluster.pps.logs("leak", job=job.id)]
    assert f"[tusk] cannot store {error}" in logs


async def test_a_fifo_in_the_output_fails_the_datum(cluster: Cluster) -> None:
    await words(cluster, {"/a": b"a"})
    await cluster.pps.create_pipeline(
        one_datum_pipeline("fifo", "mkfifo /pfs/out/pipe", datum_tries=1)
    )
    _, error = await failed_job(cluster, "fifo")
    assert error == "/pfs/out/pipe: a FIFO is not a regular file"


async def test_an_input_chunk_lost_from_the_store_fails_the_datum_naming_the_file(
    cluster: Cluster,
) -> None:
    # Two files, so the datum's files are fetched concurrently: the reason must still be the
    # lost file's own, not a wrapper's, and one try is enough (no try brings bytes back).
    await words(cluster, {"/lost": b"gone " * 100, "/kept": b"kept"})
    lost = (await entries(cluster, "words"))["/lost"].chunks[0].chunk
    async with open_object_store(cluster.config) as store:
        await store.delete(chunk_key(lost))
    await cluster.pps.create_pipeline(one_datum_pipeline("lossy", "cat /pfs/words/*"))
    job, error = await failed_job(cluster, "lossy")
    # Small files of one upload share chunks, so the lost chunk breaks both: either names it.
    assert error in {
        f"data corrupted: chunk {lost} of /pfs/words/{name} is missing from the object store"
        for name in ("lost", "kept")
    }
    (datum,) = await cluster.pps.list_datums("lossy", job.id)
    assert datum.attempts == 1


# -- faults of the runner and of the task -------------------------------------------------


async def test_a_sandbox_that_cannot_start_fails_the_datum(cluster: Cluster) -> None:
    await words(cluster, {"/a": b"a"})
    await cluster.pps.create_pipeline(
        {
            **one_datum_pipeline("nowhere", "true", datum_tries=1),
            "transform": {"cmd": ["true"], "working_dir": "/no/such/dir"},
        }
    )
    _, error = await failed_job(cluster, "nowhere")
    assert error == (
        "the sandbox could not start: Can't chdir to /no/such/dir: No such file or directory"
    )


async def running_job(cluster: Cluster, pipeline: str) -> tuple[str, str]:
    """(job id, datum id) of the pipeline's one datum, once its job runs."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        jobs = await cluster.pps.list_jobs(pipeline)
        if jobs and jobs[0].state == "JOB_RUNNING":
            (datum,) = await cluster.pps.list_datums(pipeline, jobs[0].id)
            return jobs[0].id, datum.id
        assert asyncio.get_running_loop().time() < deadline, jobs
        await asyncio.sleep(0.05)


async def publish_task(cluster: Cluster, pipeline: str, payload: bytes, msg_id: str) -> None:
    """Put a message on the pipeline's task queue as the scheduler would."""
    bus = await connect(cluster.config)
    try:
        await bus.js.publish(
            tasks_subject(cluster.config, pipeline), payload, headers={"Nats-Msg-Id": msg_id}
        )
    finally:
        await bus.close()


SLOW = one_datum_pipeline("slow", "sleep 4; cp -r /pfs/words/. /pfs/out/", datum_tries=1)


async def test_malformed_task_messages_end_the_datum_and_the_job_goes_on(
    cluster: Cluster,
) -> None:
    """Garbage naming nothing is dropped; a task whose ids are readable but whose body is
    not fails that datum at once (the real task, still sleeping, comes too late)."""
    await words(cluster, {"/a": b"a"})
    await cluster.pps.create_pipeline(SLOW)
    job_id, datum_id = await running_job(cluster, "slow")
    await publish_task(cluster, "slow", b"\xff not json at all", "garbage-1")
    broken = {"task": {"job_id": job_id, "datum_id": datum_id, "cmd": 42}, "datum_tries": 3}
    await publish_task(cluster, "slow", json.dumps(broken).encode(), "broken-1")
    _, error = await failed_job(cluster, "slow")
    assert error.startswith("the datum's task cannot be read: malformed datum task:")


async def test_a_task_whose_input_cannot_be_mounted_fails_that_datum(cluster: Cluster) -> None:
    """An input named 'out' (no spec can say that; a task can) is the runner refusing."""
    await words(cluster, {"/a": b"a"})
    await cluster.pps.create_pipeline(SLOW)
    job_id, datum_id = await running_job(cluster, "slow")
    task = DatumTask(
        pipeline="slow",
        job_id=job_id,
        datum_id=datum_id,
        attempt=1,
        inputs=(DatumTaskInput("out", "words", "master", "c", "/", ()),),
        cmd=("true",),
    )
    await publish_task(cluster, "slow", json.dumps(task_envelope(task, 1)).encode(), "out-1")
    _, error = await failed_job(cluster, "slow")
    assert error == "input name 'out' cannot be mounted at /pfs/out"


async def test_an_exception_in_the_runner_fails_only_that_datum(cluster: Cluster) -> None:
    """A NUL byte in the command (PPS keeps specs in PostgreSQL, which refuses one, so a
    task says it): the sandbox cannot even be spawned; a ValueError, not a Tusk error."""
    await words(cluster, {"/a": b"a"})
    await cluster.pps.create_pipeline(SLOW)
    job_id, datum_id = await running_job(cluster, "slow")
    task = DatumTask(
        pipeline="slow", job_id=job_id, datum_id=datum_id, attempt=1, inputs=(), cmd=("a\0b",)
    )
    await publish_task(cluster, "slow", json.dumps(task_envelope(task, 2)).encode(), "nul-1")
    job, error = await failed_job(cluster, "slow")
    assert error == "the worker failed running this datum: ValueError: embedded null byte"
    (datum,) = await cluster.pps.list_datums("slow", job.id)
    assert datum.attempts == 2


# -- transform fields -------------------------------------------------------------------

TOKEN = "tok-5e5e5e5e5e5e"


async def test_transform_fields_and_secrets_reach_the_datum(cluster: Cluster) -> None:
    await cluster.pps.create_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"token": TOKEN},
        }
    )
    await words(cluster, {"/a": b"a"})
    script = (
        "pwd > /pfs/out/pwd; id -u > /pfs/out/uid; "
        'echo "token is $TOKEN"; cat /run/secrets/creds/token; echo; '
        "wc -c < /run/secrets/creds/token > /pfs/out/length; "
        "exit 3"
    )
    await cluster.pps.create_pipeline(
        {
            **one_datum_pipeline("fields", script),
            "transform": {
                "cmd": ["sh", "-c", script],
                "working_dir": "/pfs/words",
                "user": "1000:1000",
                "accept_return_code": [3],
                "secrets": [
                    {"name": "creds", "key": "token", "env_var": "TOKEN"},
                    {"name": "creds", "mount_path": "/run/secrets/creds"},
                ],
            },
        }
    )
    (job,) = await wait_for_jobs(cluster, "fields", 1, timeout=90)
    assert job.state == "JOB_SUCCESS", job
    assert await read(cluster, "fields", "/pwd") == b"/pfs/words\n"
    assert await read(cluster, "fields", "/uid") == b"1000\n"
    assert await read(cluster, "fields", "/length") == f"{len(TOKEN)}\n".encode()
    logs = "\n".join(line.message for line in await cluster.pps.logs("fields", job=job.id))
    assert "token is [secret]" in logs
    assert TOKEN not in logs
