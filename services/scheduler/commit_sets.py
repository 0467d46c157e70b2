"""Commit sets in the scheduler: which set a job's output joins, and when to wait for one.

A job's output commit takes the id of the input commit that triggered it (a commit it
read, or the head a branch moved to), so everything computed from one input commit shares
its id (docs/architecture.md, "Commit sets"). Jobs that no commit triggered — a new or
updated spec, ``start pipeline``, ``restart datum`` — start a set of their own; so does a
job whose output repo already has a commit of the trigger's set (a branch moved back to an
old commit).

A pipeline with several inputs downstream of one commit (a diamond: C reads A and B, both
computed from raw) runs **once per set**, as in Pachyderm: the first input of the set to
finish makes no job while another input of the pipeline is still to get a commit of the
set from an active pipeline; the last one's event makes the job, which reads them all.
"""

from __future__ import annotations

import logging

from services.scheduler import store
from services.scheduler.specs import SpecCache
from shared.api.names import COMMIT_ID_RE
from shared.api.output_commits import output_description
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitRef
from shared.api.pps_models import PIPELINE_ACTIVE
from shared.pipeline.spec import PfsInput, PipelineSpec, iter_inputs
from shared.platform.db import Pool, acquire
from shared.platform.errors import AlreadyExists, NotFound

log = logging.getLogger("tusk.scheduler")


def job_commit_set(trigger: str) -> str | None:
    """The set a job's output joins, from its trigger: the input commit id (commit
    events) or the head a branch moved to (``branch:<repo>@<branch>:<head>:<event>``)."""
    if COMMIT_ID_RE.fullmatch(trigger):
        return trigger
    if trigger.startswith("branch:"):
        parts = trigger.split(":")
        if len(parts) >= 4 and COMMIT_ID_RE.fullmatch(parts[2]):
            return parts[2]
    return None


async def open_output_commit(
    pfs: PfsClient,
    repo: str,
    branch: str,
    job_id: str,
    provenance: list[CommitRef],
    set_id: str | None,
) -> str:
    """Open the job's output commit in ``set_id`` when the repo has no commit of it yet.

    A commit of the set that this job opened before its scheduler died is taken up again
    (it is open and names the job); any other one leaves the job a set of its own.
    """
    description = output_description(job_id)
    if set_id is not None:
        try:
            made = await pfs.start_commit(
                repo,
                branch,
                description=description,
                provenance=provenance,
                commit_id=set_id,
                origin="job",
            )
            return made.id
        except AlreadyExists:
            existing = await pfs.inspect_commit(repo, set_id)
            if existing.state == "open" and existing.description == description:
                return existing.id
            log.info(
                "output of job %s: %s already has set %s, a set of its own", job_id, repo, set_id
            )
    made = await pfs.start_commit(
        repo, branch, description=description, provenance=provenance, origin="job"
    )
    return made.id


async def inputs_still_coming(
    pfs: PfsClient,
    pool: Pool,
    specs: SpecCache,
    spec: PipelineSpec,
    repo: str,
    branch: str,
    commit: str,
) -> list[str]:
    """Other inputs of ``spec`` (``repo@branch`` strings) that ``commit``'s set will still
    reach through an active pipeline; the job waits for the last of them."""
    others = {
        (leaf.repo, leaf.branch)
        for leaf in iter_inputs(spec.input)
        if isinstance(leaf, PfsInput) and leaf.commit is None
    } - {(repo, branch)}
    if not others:
        return []
    try:
        found = await pfs.inspect_commit_set(commit)
    except NotFound:
        return []
    coming = set(found.pending)
    coming |= {f"{c.repo}@{c.branch}" for c in found.commits if c.state != "finished"}
    candidates = {(r, b) for r, b in others if f"{r}@{b}" in coming}
    if not candidates:
        return []
    async with acquire(pool) as conn:
        pipelines = await store.list_pipelines(conn)
    producing = {
        (p.name, specs.parse(p.name, p.version, p.spec).output_branch)
        for p in pipelines
        if p.state in PIPELINE_ACTIVE
    }
    return sorted(f"{r}@{b}" for r, b in candidates & producing)
