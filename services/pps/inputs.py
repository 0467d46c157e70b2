"""What a pipeline's inputs ask of PFS when the pipeline is created or updated.

- ``input.pfs.commit`` pins an input to one commit: it must exist in the input repo.
- ``input.pfs.trigger`` (Pachyderm's deferred processing) becomes a trigger on the
  input's branch, which PFS owns: PFS moves the branch to the head of the trigger's
  branch when the condition holds, and each move starts a job (``branch.moved``).
"""

from __future__ import annotations

from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import Trigger
from shared.pipeline.spec import BranchTrigger, PipelineSpec, pfs_inputs
from shared.platform.errors import InvalidArgument, NotFound


async def check_pinned_commits(pfs: PfsClient, spec: PipelineSpec) -> None:
    """Refuse a spec whose input is pinned to a commit its repo does not have."""
    for leaf in pfs_inputs(spec.input):
        if leaf.commit is None:
            continue
        try:
            info = await pfs.inspect_commit(leaf.repo, leaf.commit)
        except NotFound:
            info = None
        if info is None or info.id != leaf.commit:
            raise InvalidArgument(
                f"pipeline spec: input {leaf.name}: commit {leaf.commit} not found in repo "
                f"{leaf.repo} (tusk list commit {leaf.repo})",
                field="input.pfs.commit",
            )


async def set_input_triggers(pfs: PfsClient, spec: PipelineSpec) -> None:
    """Give each input branch with ``trigger`` its PFS trigger (the branch exists by now)."""
    for leaf in pfs_inputs(spec.input):
        if leaf.trigger is not None:
            await pfs.create_branch(leaf.repo, leaf.branch, trigger=pfs_trigger(leaf.trigger))


def pfs_trigger(trigger: BranchTrigger) -> Trigger:
    """The spec's trigger as PFS stores it (the same fields)."""
    return Trigger(
        branch=trigger.branch,
        size=trigger.size,
        commits=trigger.commits,
        cron=trigger.cron,
        all=trigger.all,
    )
