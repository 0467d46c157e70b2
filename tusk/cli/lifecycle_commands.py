"""Storage lifecycle: ``tusk fsck``, ``garbage-collect``, ``merge branch``, ``revert commit``."""

from __future__ import annotations

import click

from shared.platform.errors import InvalidArgument
from tusk.cli.args import REPO, REPO_AT_REF, Target
from tusk.cli.errors import EXIT_ERROR
from tusk.cli.output import echo, echo_json, human_size, output_option
from tusk.cli.session import run_pfs


@click.command("fsck")
@click.option("--repo", type=REPO, default=None, help="Check only this repo.")
@output_option
@click.pass_context
def fsck(ctx: click.Context, repo: str | None, output: str) -> None:
    """Verify every commit's index nodes and chunks, branch heads and provenance.

    Prints each problem as REPO@COMMIT:PATH: WHAT and exits 1 when there is any.
    """
    report = run_pfs(lambda pfs: pfs.fsck(repo))
    if output == "json":
        echo_json(report.to_json())
    else:
        for problem in report.problems:
            echo(problem.line())
        verdict = f"{len(report.problems)} problem(s)" if report.problems else "no problems"
        click.echo(
            f"checked {report.commits} commit(s), {report.nodes} index node(s), "
            f"{report.chunks} chunk(s): {verdict}",
            err=bool(report.problems),
        )
    if report.problems:
        ctx.exit(EXIT_ERROR)


@click.command("branch")
@click.argument("source", type=REPO_AT_REF)
@click.argument("dest", type=REPO_AT_REF)
@click.option(
    "--strategy",
    type=click.Choice(["source", "dest"]),
    default=None,
    help="Resolve paths changed on both sides by taking this side's version.",
)
@click.option("-m", "--message", default="", help="The merge commit's description.")
@output_option
def merge_branch(
    source: Target, dest: Target, strategy: str | None, message: str, output: str
) -> None:
    """Merge branch REPO@SOURCE into REPO@DEST (three-way, per file).

    Refused, listing every conflicting path, when a file changed differently on both
    sides since their newest common ancestor, unless --strategy picks a side.
    """
    if source.repo != dest.repo:
        raise InvalidArgument(
            f"merge needs two branches of one repo, not {source.repo} and {dest.repo}"
        )
    assert source.ref is not None and dest.ref is not None
    src_ref, dest_ref = source.ref, dest.ref
    result, head = run_pfs(
        lambda pfs: pfs.merge_branch(
            source.repo, src_ref, dest_ref, strategy=strategy, message=message
        )
    )
    if output == "json":
        echo_json({"result": result, "commit": head.to_json()})
        return
    what = {
        "up-to-date": f"{dest.repo}@{dest_ref} already has everything in {src_ref}",
        "fast-forward": f"fast-forwarded {dest.repo}@{dest_ref} to {head.id}",
        "merge": f"merged {src_ref} into {dest.repo}@{dest_ref}: commit {head.id}",
    }
    echo(what.get(result, f"{result}: {head.id}"))


@click.command("commit")
@click.argument("target", type=REPO_AT_REF)
@click.option("--branch", default=None, help="The branch to revert on (default: the commit's own).")
@click.option("-m", "--message", default="", help="The new commit's description.")
@output_option
def revert_commit(target: Target, branch: str | None, message: str, output: str) -> None:
    """Make a new commit on BRANCH that undoes what REPO@COMMIT changed."""
    assert target.ref is not None
    ref = target.ref
    info = run_pfs(lambda pfs: pfs.revert_commit(target.repo, ref, branch=branch, message=message))
    if output == "json":
        echo_json(info.to_json())
        return
    echo(f"reverted {target.repo}@{ref} on {info.branch}: commit {info.id}")


def _garbage_collect(dry_run: bool, grace: str | None, output: str) -> None:
    from shared.pipeline.durations import parse_duration  # compiles regexes: not for --help

    grace_s = None if grace is None else parse_duration(grace)
    if grace_s is not None and grace_s < 0:
        raise InvalidArgument(f"--grace {grace}: must not be negative")
    report = run_pfs(lambda pfs: pfs.garbage_collect(dry_run=dry_run, grace_s=grace_s))
    if output == "json":
        echo_json(report.to_json())
        return
    verb = "would free" if dry_run else "freed"
    echo(
        f"{verb} {report.objects} object(s), {human_size(report.bytes)} ({report.bytes} bytes); "
        f"{report.live_objects} live, {report.young} too young to collect"
    )


_GC_OPTIONS = [
    click.option("--dry-run", is_flag=True, help="Show what would be freed; delete nothing."),
    click.option(
        "--grace",
        default=None,
        help="Spare objects written within this long (e.g. 1h, 10m, 0); default: configured.",
    ),
    output_option,
]


def _gc_command(name: str, hidden: bool = False) -> click.Command:
    def command(dry_run: bool, grace: str | None, output: str) -> None:
        """Delete stored objects no commit, open commit, job or upload references."""
        _garbage_collect(dry_run, grace, output)

    for option in reversed(_GC_OPTIONS):
        command = option(command)
    return click.command(name, hidden=hidden)(command)


COMMANDS: list[click.Command] = [
    fsck,
    _gc_command("garbage-collect"),
    _gc_command("gc"),
]
# (verb, noun command) pairs, as the other command modules list theirs.
VERB_COMMANDS: list[tuple[str, click.Command]] = [
    ("merge", merge_branch),
    ("revert", revert_commit),
]
