"""Making jobs: which input commits a pipeline's next job reads.

Shared by the PPS service (a job when a pipeline is created, updated or
restarted) and the scheduler (a job per finished input commit).
"""

from __future__ import annotations

from shared.db import Conn
from shared.errors import NotFound
from shared.pfs_client import PfsClient
from shared.pfs_models import CommitInfo
from shared.pps import store
from shared.pps.models import InputCommit, JobInfo
from shared.pps.spec import PipelineSpec, iter_inputs


async def newest_finished_commit(pfs: PfsClient, repo: str, branch: str) -> CommitInfo | None:
    """The newest finished, error-free commit on a branch (None if it has none)."""
    try:
        info = await pfs.inspect_commit(repo, branch)
    except NotFound:
        return None
    while info.state != "finished" or info.error is not None:
        if info.parent is None:
            return None
        info = await pfs.inspect_commit(repo, info.parent)
    return info


async def job_inputs(
    pfs: PfsClient, spec: PipelineSpec, *, pinned: dict[tuple[str, str], str] | None = None
) -> list[InputCommit] | None:
    """One commit per input: ``pinned`` (repo, branch) → id, else the branch's newest finished.

    None when an input has no finished commit yet: the job waits for data.
    """
    pinned = pinned or {}
    inputs: list[InputCommit] = []
    for leaf in iter_inputs(spec.input):
        commit_id = pinned.get((leaf.repo, leaf.branch))
        if commit_id is None:
            info = await newest_finished_commit(pfs, leaf.repo, leaf.branch)
            if info is None:
                return None
            commit_id = info.id
        inputs.append(InputCommit(leaf.name, leaf.repo, leaf.branch, commit_id))
    return inputs


async def create_job_if_new(
    conn: Conn,
    spec: PipelineSpec,
    version: int,
    trigger: str,
    inputs: list[InputCommit],
    *,
    reprocess: bool = False,
) -> JobInfo | None:
    """Record a JOB_CREATED job unless the same trigger already made one."""
    return await store.create_job(conn, spec.name, version, trigger, inputs, reprocess=reprocess)
