"""``start|finish|inspect|list|wait|subscribe|squash|delete commit``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from shared.api.pfs_models import CommitInfo
from shared.platform.errors import InvalidArgument
from tusk.cli.args import REPO_AT, REPO_AT_REF, Target, writable_branch
from tusk.cli.commit_set_commands import (
    COMMIT_OR_SET,
    REPO_OR_SET,
    CommitSetId,
    delete_set,
    inspect_set,
    list_set,
    squash_set,
    wait_set,
)
from tusk.cli.output import (
    echo,
    echo_json,
    format_fields,
    format_table,
    human_size,
    output_option,
    relative_time,
)
from tusk.cli.session import closing, run_pfs

if TYPE_CHECKING:
    from shared.api.pfs_client import PfsClient  # imported when a command runs (session.py)

COMMIT_HEADERS = ("REPO", "BRANCH", "COMMIT", "FINISHED", "SIZE", "DESCRIPTION")


def commit_row(commit: CommitInfo) -> tuple[str, ...]:
    """One line of ``list commit``; an open commit shows its state where the time would be."""
    finished = relative_time(commit.finished) if commit.finished else commit.state
    return (
        commit.repo,
        commit.branch or "-",
        commit.id,
        finished,
        human_size(commit.size_bytes),
        commit.description,
    )


def commit_table(commits: Sequence[CommitInfo]) -> str:
    """REPO BRANCH COMMIT FINISHED SIZE DESCRIPTION."""
    return format_table(COMMIT_HEADERS, [commit_row(c) for c in commits])


def commit_fields(commit: CommitInfo) -> str:
    """``inspect commit``'s readable form."""
    pairs = [
        ("Commit", f"{commit.repo}@{commit.id}"),
        ("Original Branch", commit.branch or "-"),
        # A merge commit has two parents: the destination's old head, then the source's.
        ("Parent", ", ".join(p for p in (commit.parent, commit.second_parent) if p) or "-"),
        ("State", commit.state),
        # Who made it: user, job, s3 (the S3 gateway), cron, merge or revert.
        ("Origin", commit.origin),
        ("Started", relative_time(commit.started)),
        ("Finished", relative_time(commit.finished)),
        ("Size", human_size(commit.size_bytes)),
        ("Files", str(commit.file_count)),
        ("Description", commit.description),
        ("Provenance", ", ".join(str(p) for p in commit.provenance) or "-"),
    ]
    if commit.error:
        pairs.append(("Error", commit.error))
    return format_fields(pairs)


def print_commit(commit: CommitInfo, output: str) -> None:
    if output == "json":
        echo_json(commit.to_json())
    else:
        echo(commit_fields(commit))


@click.command("commit")
@click.argument("target", metavar="REPO@BRANCH", type=REPO_AT)
@click.option("-m", "--message", "description", default="", help="Describe the commit.")
def start_commit(target: Target, description: str) -> None:
    """Open a new commit on a branch and print its id."""
    branch = writable_branch(target, "start commit")
    commit = run_pfs(lambda pfs: pfs.start_commit(target.repo, branch, description=description))
    echo(commit.id)


@click.command("commit")
@click.argument("target", metavar="REPO@REF", type=REPO_AT_REF)
@click.option("-m", "--message", "description", default=None, help="Replace the description.")
def finish_commit(target: Target, description: str | None) -> None:
    """Finish an open commit: its files become visible and immutable."""
    ref = target.ref_or_default
    run_pfs(lambda pfs: pfs.finish_commit(target.repo, ref, description=description))


@click.command("commit")
@click.argument("target", metavar="REPO@REF|ID", type=COMMIT_OR_SET)
@click.option(
    "--subvenance",
    is_flag=True,
    help="List every downstream commit made from this one (at any distance) instead.",
)
@output_option
def inspect_commit(target: Target | CommitSetId, subvenance: bool, output: str) -> None:
    """Show one commit (REF: a branch, a commit id, or master^, master~2…), or with a bare
    ID the commit set: its commits in every repo, their states and the jobs that made them.

    Its provenance is shown twice: the direct one (the commits it was made from) and the
    full one (every upstream commit, however far).
    """
    if isinstance(target, CommitSetId):
        if subvenance:
            raise InvalidArgument("--subvenance needs one commit: REPO@COMMIT")
        inspect_set(target.id, output)
        return
    ref = target.ref_or_default

    async def inspect(pfs: PfsClient) -> tuple[CommitInfo, dict[str, list[CommitInfo]]]:
        return await pfs.inspect_commit(target.repo, ref), await pfs.commit_lineage(
            target.repo, ref
        )

    commit, lineage = run_pfs(inspect)
    if subvenance:
        print_commits(lineage["subvenance"], output)
        return
    if output == "json":
        echo_json(
            {
                **commit.to_json(),
                "direct_provenance": [_ref_json(c) for c in lineage["direct_provenance"]],
                "full_provenance": [_ref_json(c) for c in lineage["full_provenance"]],
            }
        )
        return
    full = ", ".join(f"{c.repo}@{c.id}" for c in lineage["full_provenance"]) or "-"
    echo(commit_fields(commit) + "\n" + format_fields([("Full Provenance", full)]))


def _ref_json(commit: CommitInfo) -> dict[str, str | None]:
    return {"repo": commit.repo, "branch": commit.branch, "id": commit.id}


def print_commits(commits: Sequence[CommitInfo], output: str) -> None:
    if output == "json":
        echo_json([c.to_json() for c in commits])
    else:
        echo(commit_table(commits))


async def collect_commits(
    pfs: PfsClient, repo: str, branch: str | None, limit: int | None
) -> list[CommitInfo]:
    """Newest first across all pages, stopping at ``limit``."""
    page = min(limit, 100) if limit else 100
    found: list[CommitInfo] = []
    async with closing(pfs.iter_commits(repo, branch, page=page)) as commits:
        async for commit in commits:
            found.append(commit)
            if limit is not None and len(found) >= limit:
                break
    return found


async def commits_made_from(
    pfs: PfsClient, target: Target, source: Target, limit: int | None
) -> list[CommitInfo]:
    """``target``'s commits whose provenance includes the commit ``source`` names."""
    downstream = (await pfs.commit_lineage(source.repo, source.ref_or_default))["subvenance"]
    found = [
        c
        for c in reversed(downstream)  # newest first, as list commit prints
        if c.repo == target.repo and (target.ref is None or c.branch == target.ref)
    ]
    return found[:limit] if limit else found


async def recent_commits_everywhere(pfs: PfsClient, limit: int) -> list[CommitInfo]:
    """``list commit`` with no repo: the newest ``limit`` commits over every repo."""
    found: list[CommitInfo] = []
    for repo in await pfs.list_repos():
        found.extend(await collect_commits(pfs, repo.name, None, limit))
    found.sort(key=lambda c: c.started or "", reverse=True)
    return found[:limit]


# How many commits ``list commit`` shows when neither a repo nor -n is given.
RECENT_COMMITS = 50


@click.command("commit")
@click.argument("target", metavar="[REPO[@BRANCH]|ID]", type=REPO_OR_SET, required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Show at most N.")
@click.option(
    "--provenance-of",
    "source",
    type=REPO_AT_REF,
    default=None,
    metavar="REPO@COMMIT",
    help="Only the commits made from this input commit (e.g. a pipeline's outputs of it).",
)
@output_option
def list_commit(
    target: Target | CommitSetId | None, limit: int | None, source: Target | None, output: str
) -> None:
    """List commits, newest first (all branches unless one is given).

    With no repo: the most recent commits of every repo (50 unless -n says otherwise).
    With a bare commit ID: every commit of that commit set, in every repo.
    """
    if isinstance(target, CommitSetId):
        if source is not None:
            raise InvalidArgument("--provenance-of needs the repo to look in: list commit REPO")
        commits = list_set(target.id, limit)
    elif target is None:
        if source is not None:
            raise InvalidArgument("--provenance-of needs the repo to look in: list commit REPO")
        recent = limit or RECENT_COMMITS
        commits = run_pfs(lambda pfs: recent_commits_everywhere(pfs, recent))
    elif source is not None:
        chosen, within = source, target
        commits = run_pfs(lambda pfs: commits_made_from(pfs, within, chosen, limit))
    else:
        commits = run_pfs(lambda pfs: collect_commits(pfs, target.repo, target.ref, limit))
    if output == "json":
        echo_json([c.to_json() for c in commits])
        return
    echo(commit_table(commits))


@click.command("commit")
@click.argument("target", metavar="REPO@REF|ID", type=COMMIT_OR_SET)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@output_option
def wait_commit(target: Target | CommitSetId, timeout: float | None, output: str) -> None:
    """Block until a commit is finished, then show it. With a bare commit ID: until every
    commit of the set is finished, downstream pipelines' output commits included; exits 1
    naming the failed job if one fails."""
    if isinstance(target, CommitSetId):
        wait_set(target.id, timeout, output)
        return
    ref = target.ref_or_default
    commit = run_pfs(lambda pfs: pfs.wait_commit(target.repo, ref, timeout=timeout))
    print_commit(commit, output)


async def print_subscription(
    pfs: PfsClient, repo: str, branch: str, all_: bool, output: str
) -> None:
    """Print each finished commit as it arrives: one JSON line, or one table row."""
    widths = (max(len(repo), 4), max(len(branch), 6), 32, 18, 10)
    if output != "json":
        echo(_fixed_row(COMMIT_HEADERS, widths))
    async with closing(pfs.subscribe_commits(repo, branch, all_=all_)) as commits:
        async for commit in commits:
            if output == "json":
                echo_json(commit.to_json(), compact=True)
            else:
                echo(_fixed_row(commit_row(commit), widths))


def _fixed_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "   ".join([*padded, *cells[len(widths) :]]).rstrip()


@click.command("commit")
@click.argument("target", metavar="REPO@BRANCH", type=REPO_AT)
@click.option("--all", "all_", is_flag=True, help="Start with the branch's existing commits.")
@output_option
def subscribe_commit(target: Target, all_: bool, output: str) -> None:
    """Print each new finished commit on a branch until interrupted (Ctrl-C)."""
    branch = target.ref_or_default
    with contextlib.suppress(KeyboardInterrupt):
        run_pfs(lambda pfs: print_subscription(pfs, target.repo, branch, all_, output))


@click.command("commit")
@click.argument("target", metavar="REPO@REF|ID", type=COMMIT_OR_SET)
def squash_commit(target: Target | CommitSetId) -> None:
    """Merge a commit's changes into its child and remove it from history (a bare ID: every
    commit of the set, all or none)."""
    if isinstance(target, CommitSetId):
        squash_set(target.id)
        return
    ref = target.ref_or_default
    run_pfs(lambda pfs: pfs.squash_commit(target.repo, ref))


@click.command("commit")
@click.argument("target", metavar="REPO@REF|ID", type=COMMIT_OR_SET)
def delete_commit(target: Target | CommitSetId) -> None:
    """Delete an open commit (and move branches that pointed at it back to its parent); a
    bare ID: every commit of the set, all or none."""
    if isinstance(target, CommitSetId):
        delete_set(target.id)
        return
    ref = target.ref_or_default
    run_pfs(lambda pfs: pfs.delete_commit(target.repo, ref))


COMMANDS: list[tuple[str, click.Command]] = [
    ("start", start_commit),
    ("finish", finish_commit),
    ("inspect", inspect_commit),
    ("list", list_commit),
    ("wait", wait_commit),
    ("subscribe", subscribe_commit),
    ("squash", squash_commit),
    ("delete", delete_commit),
]
