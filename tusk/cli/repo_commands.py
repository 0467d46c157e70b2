"""``create|list|inspect|delete repo`` and ``create|list|inspect|delete branch``."""

from __future__ import annotations

import click

from shared.api.names import check_name, parse_ref
from shared.api.pfs_models import BranchInfo, RepoInfo, Trigger
from shared.platform.errors import InvalidArgument
from tusk.cli.args import REPO, REPO_AT_REF, Target, parse_target
from tusk.cli.output import (
    echo,
    echo_json,
    format_fields,
    format_table,
    human_size,
    output_option,
    relative_time,
)
from tusk.cli.session import run_pfs

# Repos


@click.command("repo")
@click.argument("repo", type=REPO)
@click.option("-d", "--description", default="", help="What the repo holds.")
def create_repo(repo: str, description: str) -> None:
    """Create a new, empty repo (with its master branch)."""
    run_pfs(lambda pfs: pfs.create_repo(repo, description))


@click.command("repo")
@output_option
def list_repo(output: str) -> None:
    """List every repo."""
    repos = run_pfs(lambda pfs: pfs.list_repos())
    if output == "json":
        echo_json([r.to_json() for r in repos])
        return
    echo(repo_table(repos))


def repo_table(repos: list[RepoInfo]) -> str:
    """NAME CREATED SIZE DESCRIPTION."""
    rows = [
        (r.name, relative_time(r.created), human_size(r.size_bytes), r.description) for r in repos
    ]
    return format_table(("NAME", "CREATED", "SIZE", "DESCRIPTION"), rows)


@click.command("repo")
@click.argument("repo", type=REPO)
@output_option
def inspect_repo(repo: str, output: str) -> None:
    """Show one repo."""
    info = run_pfs(lambda pfs: pfs.inspect_repo(repo))
    if output == "json":
        echo_json(info.to_json())
        return
    echo(
        format_fields(
            [
                ("Name", info.name),
                ("Description", info.description),
                ("Created", relative_time(info.created)),
                ("Size", human_size(info.size_bytes)),
                ("Branches", ", ".join(info.branches) or "-"),
            ]
        )
    )


@click.command("repo")
@click.argument("repo", type=REPO)
@click.option("--force", is_flag=True, help="Delete even if other branches are computed from it.")
def delete_repo(repo: str, force: bool) -> None:
    """Delete a repo with all its branches, commits and files."""
    run_pfs(lambda pfs: pfs.delete_repo(repo, force=force))


# Branches


def _branch_name(target: Target) -> str:
    if target.ref is None:
        raise InvalidArgument(f"invalid {target.text!r}: expected REPO@BRANCH")
    return check_name("branch", target.ref)


def _provenance_entry(text: str) -> str:
    target = parse_target(text)
    if target.path is not None or target.ref is None:
        raise InvalidArgument(f"invalid provenance {text!r}: expected REPO@BRANCH")
    return f"{target.repo}@{check_name('branch', target.ref)}"


@click.command("branch")
@click.argument("target", metavar="REPO@BRANCH", type=REPO_AT_REF)
@click.option("--head", default=None, metavar="REF", help="Commit or branch to point at.")
@click.option(
    "-p",
    "--provenance",
    multiple=True,
    metavar="REPO@BRANCH",
    help="A branch this one is computed from (repeatable).",
)
@click.option(
    "-t", "--trigger", "trigger_branch", metavar="BRANCH", help="Follow this branch's head."
)
@click.option("--trigger-size", metavar="SIZE", help="...once it grew this much (e.g. 1MB).")
@click.option("--trigger-commits", type=int, metavar="N", help="...once it has N new commits.")
@click.option("--trigger-cron", metavar="SPEC", help="...when this schedule comes due.")
@click.option("--trigger-all", is_flag=True, help="Move only when all conditions hold.")
def create_branch(
    target: Target,
    head: str | None,
    provenance: tuple[str, ...],
    trigger_branch: str | None,
    trigger_size: str | None,
    trigger_commits: int | None,
    trigger_cron: str | None,
    trigger_all: bool,
) -> None:
    """Create a branch, or move it when it exists (like pachctl).

    With --trigger, the branch moves to the head of that branch whenever the
    conditions hold (counted since it last moved); without a condition it follows
    every commit (Pachyderm's deferred processing).
    """
    name = _branch_name(target)
    if head is not None:
        parse_ref(head)
    sources = [_provenance_entry(p) for p in provenance]
    trigger = _trigger(trigger_branch, trigger_size, trigger_commits, trigger_cron, trigger_all)
    run_pfs(
        lambda pfs: pfs.create_branch(
            target.repo, name, head=head, provenance=sources, trigger=trigger
        )
    )


def _trigger(
    branch: str | None, size: str | None, commits: int | None, cron: str | None, all_: bool
) -> Trigger | None:
    if branch is None:
        if size is not None or commits is not None or cron is not None or all_:
            raise InvalidArgument(
                "a trigger condition needs the branch to follow: --trigger BRANCH"
            )
        return None
    size_bytes = None
    if size is not None:
        from shared.pipeline.spec import parse_size  # imported here: only triggers need it

        size_bytes = parse_size(size)
    return Trigger(
        branch=check_name("branch", branch), size=size_bytes, commits=commits, cron=cron, all=all_
    )


@click.command("branch")
@click.argument("repo", type=REPO)
@output_option
def list_branch(repo: str, output: str) -> None:
    """List a repo's branches."""
    branches = run_pfs(lambda pfs: pfs.list_branches(repo))
    if output == "json":
        echo_json([b.to_json() for b in branches])
        return
    echo(branch_table(branches))


def branch_table(branches: list[BranchInfo]) -> str:
    """BRANCH HEAD PROVENANCE."""
    rows = [(b.name, b.head or "-", ", ".join(b.provenance) or "-") for b in branches]
    return format_table(("BRANCH", "HEAD", "PROVENANCE"), rows)


@click.command("branch")
@click.argument("target", metavar="REPO@BRANCH", type=REPO_AT_REF)
@output_option
def inspect_branch(target: Target, output: str) -> None:
    """Show one branch: its head, what it is computed from and what is computed from it."""
    name = _branch_name(target)
    info = run_pfs(lambda pfs: pfs.inspect_branch(target.repo, name))
    if output == "json":
        echo_json(info.to_json())
        return
    echo(
        format_fields(
            [
                ("Name", f"{info.repo}@{info.name}"),
                ("Head", info.head or "-"),
                ("Provenance", ", ".join(info.provenance) or "-"),
                ("Subvenance", ", ".join(info.subvenance) or "-"),
                ("Trigger", trigger_text(info.trigger)),
            ]
        )
    )


def trigger_text(trigger: Trigger | None) -> str:
    """``staging (size >= 1000000 bytes or 10 commits)``, or ``-``."""
    if trigger is None:
        return "-"
    conditions = []
    if trigger.size is not None:
        conditions.append(f"size >= {trigger.size} bytes")
    if trigger.commits is not None:
        conditions.append(f"{trigger.commits} commits")
    if trigger.cron is not None:
        conditions.append(f"cron {trigger.cron!r}")
    joined = (" and " if trigger.all else " or ").join(conditions) or "every commit"
    return f"{trigger.branch} ({joined})"


@click.command("branch")
@click.argument("target", metavar="REPO@BRANCH", type=REPO_AT_REF)
@click.option("--force", is_flag=True, help="Delete even if other branches are computed from it.")
def delete_branch(target: Target, force: bool) -> None:
    """Delete a branch (its commits stay reachable by id)."""
    name = _branch_name(target)
    run_pfs(lambda pfs: pfs.delete_branch(target.repo, name, force=force))


COMMANDS: list[tuple[str, click.Command]] = [
    ("create", create_repo),
    ("list", list_repo),
    ("inspect", inspect_repo),
    ("delete", delete_repo),
    ("create", create_branch),
    ("list", list_branch),
    ("inspect", inspect_branch),
    ("delete", delete_branch),
]
