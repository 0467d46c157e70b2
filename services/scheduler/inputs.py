"""Input events → jobs: what a finished commit or a moved branch starts.

Two events start jobs, each for every active pipeline that reads the branch (inputs
pinned to a commit by ``input.pfs.commit`` excepted):

- ``commit.finished`` of a good commit on a branch: a job reading that commit. The
  job's trigger is the commit id, and a commit that some job of the pipeline already
  read makes none: one job per input commit. Nor does a commit the pipeline has moved
  past — an ancestor of the commit of that branch its newest job over the branch reads:
  JetStream redelivers an unsettled event after later ones, and a job for the older
  commit would replace the newer output (the newer job already covers its data).
- ``branch.moved`` to a finished, good commit — ``tusk create branch R@master --head
  staging``, a trigger firing, a failed commit putting the head back: a job reading the
  new head, unless the pipeline's newest job already reads it (a put moves the head
  *and* finishes a commit: one job). Its trigger is unique per move
  (``branch:<repo>@<branch>:<new head>:<event id>``), so moving a branch back to an
  older commit runs the pipeline again, as in Pachyderm. A move the branch has already
  left behind (read late) makes none: the later move's own event does the work.

Both run again safely when an event is delivered twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from services.scheduler import store
from services.scheduler.commit_sets import inputs_still_coming
from services.scheduler.input_commits import job_inputs, triggering_branches
from services.scheduler.specs import SpecCache
from shared.api.events import BranchMoved, CommitFinished, Event
from shared.api.pfs_client import PfsClient
from shared.api.pps_models import PIPELINE_ACTIVE, InputCommit, JobInfo, PipelineInfo
from shared.pipeline.spec import PipelineSpec
from shared.platform.db import Conn, Pool, acquire
from shared.platform.errors import NotFound

log = logging.getLogger("tusk.scheduler")


@dataclass(frozen=True)
class InputRead:
    """One input commit that made a job: ``commit`` on ``repo@branch``."""

    repo: str
    branch: str
    commit: str


class NewestReadMoved(Exception):
    """Another job over the branch was recorded since the caller checked its newest read."""


async def create_job_unless_read(
    conn: Conn,
    spec: PipelineSpec,
    version: int,
    trigger: str,
    inputs: list[InputCommit],
    read: InputRead,
    *,
    newest_only: bool,
    newest_read_seen: str | None = None,
    check_newest_read: bool = False,
) -> JobInfo | None:
    """Record a job made by ``read`` unless a job of the pipeline already reads it (the
    newest job, with ``newest_only``: a branch moved back to an older commit runs again).

    One input commit reaches the scheduler twice — as ``commit.finished`` and as the
    ``branch.moved`` of the same commit, on two consumers — and must make one job. Runs in
    the caller's transaction: the lock on the pipeline's row (in the scheduler's own view of
    the pipelines) makes the check and the insert one step.
    With ``check_newest_read``, raises :class:`NewestReadMoved` when the branch's newest
    read is no longer ``newest_read_seen`` (the caller judged ``read`` against that one).
    """
    await store.get_pipeline(conn, spec.name, lock=True)
    if check_newest_read and (
        await store.newest_read(conn, spec.name, read.repo, read.branch) != newest_read_seen
    ):
        raise NewestReadMoved(spec.name)
    if await store.job_reads(
        conn, spec.name, read.repo, read.branch, read.commit, newest_only=newest_only
    ):
        return None
    return await store.create_job(conn, spec.name, version, trigger, inputs)


class JobStarter:
    """Turns input events into JOB_CREATED jobs (the engine drives them from there)."""

    def __init__(self, pool: Pool, pfs: PfsClient, specs: SpecCache) -> None:
        self.pool = pool
        self.pfs = pfs
        self.specs = specs

    async def on_events(self, batch: list[bytes]) -> bool:
        """Handle a batch of ``commit.finished``/``branch.moved`` events; True if a job was made."""
        made = False
        for data in batch:
            event = Event.from_bytes(data)
            if isinstance(event.payload, CommitFinished):
                made = await self.commit_finished(event.payload) or made
            elif isinstance(event.payload, BranchMoved):
                made = await self.branch_moved(event.id, event.payload) or made
        return made

    async def commit_finished(self, payload: CommitFinished) -> bool:
        if payload.error or payload.branch is None:
            return False
        readers = await self._readers(payload.repo, payload.branch)
        read = InputRead(payload.repo, payload.branch, payload.commit)
        return await self._start(readers, read, payload.commit, newest_only=False, in_order=True)

    async def branch_moved(self, event_id: str, payload: BranchMoved) -> bool:
        if payload.new_head is None:
            return False
        readers = await self._readers(payload.repo, payload.branch)
        if not readers or not await self._is_current_good_head(
            payload.repo, payload.branch, payload.new_head
        ):
            return False
        read = InputRead(payload.repo, payload.branch, payload.new_head)
        trigger = f"branch:{payload.repo}@{payload.branch}:{payload.new_head}:{event_id}"
        return await self._start(readers, read, trigger, newest_only=True)

    async def _is_current_good_head(self, repo: str, branch: str, commit: str) -> bool:
        """Whether ``commit`` is still the branch's head and is finished without error (an
        open head gets its job from its ``commit.finished``)."""
        try:
            info = await self.pfs.inspect_commit(repo, commit)
            head = (await self.pfs.inspect_branch(repo, branch)).head
        except NotFound:
            return False
        return head == commit and info.state == "finished" and info.error is None

    async def _is_ancestor(self, repo: str, older: str, newer: str) -> bool:
        """Whether ``older`` is a strict ancestor of ``newer`` (a commit starts after its
        parent, so the walk up from ``newer`` stops at commits started before ``older``)."""
        try:
            bound = datetime.fromisoformat((await self.pfs.inspect_commit(repo, older)).started)
            commit = await self.pfs.inspect_commit(repo, newer)
            while commit.parent is not None and datetime.fromisoformat(commit.started) >= bound:
                if commit.parent == older:
                    return True
                commit = await self.pfs.inspect_commit(repo, commit.parent)
        except NotFound:
            return False
        return False

    async def _superseded(self, pipeline: str, read: InputRead) -> tuple[bool, str | None]:
        """Whether the pipeline's newest read of ``read``'s branch descends from
        ``read.commit`` (the pipeline moved past it), and that newest read."""
        async with acquire(self.pool) as conn:
            newest = await store.newest_read(conn, pipeline, read.repo, read.branch)
        if newest is None or newest == read.commit:
            return False, newest
        return await self._is_ancestor(read.repo, read.commit, newest), newest

    async def _readers(self, repo: str, branch: str) -> list[tuple[PipelineInfo, PipelineSpec]]:
        """The active pipelines whose jobs ``repo@branch`` starts."""
        async with acquire(self.pool) as conn:
            pipelines = await store.list_pipelines(conn)
        readers = []
        for pipeline in pipelines:
            if pipeline.state not in PIPELINE_ACTIVE:
                continue
            spec = self.specs.parse(pipeline.name, pipeline.version, pipeline.spec)
            if (repo, branch) in triggering_branches(spec):
                readers.append((pipeline, spec))
        return readers

    async def _start(
        self,
        readers: list[tuple[PipelineInfo, PipelineSpec]],
        read: InputRead,
        trigger: str,
        *,
        newest_only: bool,
        in_order: bool = False,
    ) -> bool:
        """With ``in_order``, a commit the pipeline has moved past makes no job."""
        made = False
        for pipeline, spec in readers:
            # PFS is asked before the transaction: no network call while a row is locked.
            inputs = await job_inputs(
                self.pfs, spec, pinned={(read.repo, read.branch): read.commit}
            )
            if inputs is None:
                continue
            if in_order and (
                coming := await inputs_still_coming(
                    self.pfs, self.pool, self.specs, spec, read.repo, read.branch, read.commit
                )
            ):
                log.info(
                    "no job of %s for %s@%s yet: its set still reaches %s",
                    spec.name, read.repo, read.commit, ", ".join(coming),
                )  # fmt: skip
                continue
            job = await self._create(pipeline, spec, trigger, inputs, read, newest_only, in_order)
            if job is not None:
                log.info("job %s of %s for %s@%s", job.id, spec.name, read.repo, read.commit)
                made = True
        return made

    async def _create(
        self,
        pipeline: PipelineInfo,
        spec: PipelineSpec,
        trigger: str,
        inputs: list[InputCommit],
        read: InputRead,
        newest_only: bool,
        in_order: bool,
    ) -> JobInfo | None:
        while True:
            newest: str | None = None
            if in_order:
                superseded, newest = await self._superseded(spec.name, read)
                if superseded:
                    log.info(
                        "no job of %s for %s@%s: its newest job reads the later %s",
                        spec.name, read.repo, read.commit, newest,
                    )  # fmt: skip
                    return None
            try:
                async with acquire(self.pool) as conn, conn.transaction():
                    return await create_job_unless_read(
                        conn, spec, pipeline.version, trigger, inputs, read,
                        newest_only=newest_only, newest_read_seen=newest,
                        check_newest_read=in_order,
                    )  # fmt: skip
            except NewestReadMoved:
                continue  # a job over the branch was recorded meanwhile: judge again
            except NotFound:
                return None  # the pipeline was deleted while PFS was asked
