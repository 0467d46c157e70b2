"""Which input commits a pipeline's next job reads, asked of PFS over its API.

The scheduler's: a job per finished input commit or moved branch, and the jobs PPS asks
for when a pipeline is created, updated or started or a datum restarted. No database
here: jobs are recorded through ``services.scheduler.store``.

An input pinned to a commit (``input.pfs.commit``) reads exactly that commit, in
every job; commits and moves on its branch start no job (``triggering_branches``).
"""

from __future__ import annotations

import logging

from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitInfo
from shared.api.pps_models import InputCommit
from shared.pipeline.spec import CronInput, PfsInput, PipelineSpec, iter_inputs
from shared.platform.errors import NotFound

log = logging.getLogger("tusk.input_commits")


def triggering_branches(spec: PipelineSpec) -> set[tuple[str, str]]:
    """The (repo, branch) pairs whose new commits or head moves start a job: every input's
    branch but those of inputs pinned to a commit."""
    return {
        (leaf.repo, leaf.branch)
        for leaf in iter_inputs(spec.input)
        if isinstance(leaf, CronInput) or leaf.commit is None
    }


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
    """One commit per input: the spec's ``commit`` if the input has one, else ``pinned``
    (repo, branch) → id (the commit an event names), else the branch's newest finished.

    None when an input has no finished commit yet: the job waits for data.
    """
    pinned = pinned or {}
    inputs: list[InputCommit] = []
    for leaf in iter_inputs(spec.input):
        if isinstance(leaf, PfsInput) and leaf.commit is not None:
            commit_id = await _spec_commit(pfs, spec.name, leaf)
        else:
            commit_id = pinned.get((leaf.repo, leaf.branch))
            if commit_id is None:
                info = await newest_finished_commit(pfs, leaf.repo, leaf.branch)
                commit_id = info.id if info is not None else None
        if commit_id is None:
            return None
        inputs.append(InputCommit(leaf.name, leaf.repo, leaf.branch, commit_id))
    return inputs


async def _spec_commit(pfs: PfsClient, pipeline: str, leaf: PfsInput) -> str | None:
    """The commit an input is pinned to, once it is finished (None until then, or if gone)."""
    assert leaf.commit is not None
    try:
        info = await pfs.inspect_commit(leaf.repo, leaf.commit)
    except NotFound:
        log.warning(
            "pipeline %s: input %s is pinned to commit %s@%s, which is gone; no job runs",
            pipeline,
            leaf.name,
            leaf.repo,
            leaf.commit,
        )
        return None
    return info.id if info.state == "finished" else None
