"""Commit sets on the command line: a bare commit id (no ``repo@``) names the whole set.

``list``, ``inspect``, ``wait``, ``squash`` and ``delete commit ID`` act on every commit
carrying that id, in every repo (Pachyderm 2's global IDs; docs/architecture.md, "Commit
sets"). Exactly 32 hex digits with no ``@`` is a set id; a repo named like one is written
``REPO@BRANCH``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shared.api.names import COMMIT_ID_RE
from shared.api.output_commits import job_of
from shared.api.pfs_models import CommitInfo, CommitSetInfo
from shared.platform.errors import FailedPrecondition, NotFound
from tusk.cli.args import TargetType
from tusk.cli.output import echo, echo_json, format_fields, format_table, relative_time
from tusk.cli.session import naming_context

if TYPE_CHECKING:
    from shared.api.pfs_client import PfsClient
    from shared.api.pps_client import PpsClient
    from shared.api.pps_models import JobInfo

T = TypeVar("T")


@dataclass(frozen=True)
class CommitSetId:
    """A commit set named by its bare id."""

    id: str


class CommitOrSetType(TargetType):
    """``REPO@REF`` (as ``TargetType`` checks it), or a bare commit id: a commit set."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, CommitSetId):
            return value
        text = str(value)
        if "@" not in text and COMMIT_ID_RE.fullmatch(text):
            return CommitSetId(text)
        return super().convert(value, param, ctx)


COMMIT_OR_SET = CommitOrSetType(ref=True, no_path=True)
REPO_OR_SET = CommitOrSetType(no_path=True)


def run_sets(call: Callable[[PfsClient, PpsClient], Awaitable[T]]) -> T:
    """Run ``call`` with a PFS and a PPS client of the active endpoints."""
    import asyncio

    from shared.api.pfs_client import PfsClient
    from shared.api.pps_client import PpsClient
    from tusk.contexts import resolve_endpoints

    endpoints = resolve_endpoints()

    async def with_clients() -> T:
        async with (
            PfsClient(endpoints.pfs_url, cluster_id=endpoints.cluster_id) as pfs,
            PpsClient(endpoints.pps_url, cluster_id=endpoints.cluster_id) as pps,
        ):
            return await call(pfs, pps)

    with naming_context(endpoints, endpoints.pfs_url):
        return asyncio.run(with_clients())


async def set_jobs(pps: PpsClient, commits: list[CommitInfo]) -> dict[tuple[str, str], JobInfo]:
    """The jobs that made the set's output commits, by (pipeline, commit id)."""
    jobs = {}
    for commit in commits:
        job_id = job_of(commit)
        if job_id is None:
            continue
        try:
            jobs[(commit.repo, commit.id)] = await pps.inspect_job(commit.repo, job_id)
        except NotFound:
            continue  # deleted with ``delete job``: the commit stays
    return jobs


def set_document(info: CommitSetInfo, jobs: dict[tuple[str, str], JobInfo]) -> dict[str, Any]:
    return {**info.to_json(), "jobs": [job.to_json() for job in jobs.values()]}


def set_text(info: CommitSetInfo, jobs: dict[tuple[str, str], JobInfo]) -> str:
    head = format_fields(
        [
            ("Commit Set", info.id),
            ("State", info.state),
            ("Pending", ", ".join(info.pending) or "-"),
        ]
    )
    rows = []
    for commit in info.commits:
        job = jobs.get((commit.repo, commit.id))
        state = "failed" if commit.error else commit.state
        rows.append(
            (
                commit.repo,
                commit.branch or "-",
                state,
                relative_time(commit.finished) if commit.finished else "-",
                f"{job.pipeline}@{job.id}" if job else "-",
                job.state if job else "-",
            )
        )
    table = format_table(("REPO", "BRANCH", "STATE", "FINISHED", "JOB", "JOB STATE"), rows)
    return head + "\n" + table


def failure_line(info: CommitSetInfo, jobs: dict[tuple[str, str], JobInfo]) -> str:
    """Why a set failed: each failed commit, and the job that made it."""
    parts = []
    for commit in info.failed:
        job = jobs.get((commit.repo, commit.id))
        made = f"job {job.pipeline}@{job.id} {job.state}" if job else f"commit {commit.repo}"
        parts.append(f"{made}: {commit.error}")
    return f"commit set {info.id} failed: " + "; ".join(parts)


def inspect_set(set_id: str, output: str) -> None:
    async def read(pfs: PfsClient, pps: PpsClient) -> tuple[CommitSetInfo, dict[Any, JobInfo]]:
        info = await pfs.inspect_commit_set(set_id)
        return info, await set_jobs(pps, info.commits)

    info, jobs = run_sets(read)
    if output == "json":
        echo_json(set_document(info, jobs))
    else:
        echo(set_text(info, jobs))


def list_set(set_id: str, limit: int | None) -> list[CommitInfo]:
    from tusk.cli.session import run_pfs

    info = run_pfs(lambda pfs: pfs.inspect_commit_set(set_id))
    return info.commits[:limit] if limit else info.commits


def wait_set(set_id: str, timeout: float | None, output: str) -> None:
    """Wait for the set; print it; exit 1 naming the failed job if one failed."""

    async def wait(pfs: PfsClient, pps: PpsClient) -> tuple[CommitSetInfo, dict[Any, JobInfo]]:
        info = await pfs.wait_commit_set(set_id, timeout=timeout)
        return info, await set_jobs(pps, info.commits)

    info, jobs = run_sets(wait)
    if output == "json":
        echo_json(set_document(info, jobs))
    else:
        echo(set_text(info, jobs))
    if info.state == "failed":
        raise FailedPrecondition(failure_line(info, jobs))


def squash_set(set_id: str) -> None:
    from tusk.cli.session import run_pfs

    run_pfs(lambda pfs: pfs.squash_commit_set(set_id))


def delete_set(set_id: str) -> None:
    from tusk.cli.session import run_pfs

    run_pfs(lambda pfs: pfs.delete_commit_set(set_id))
