"""``tusk fsck`` (and, as they land, merge, revert and garbage-collect): storage lifecycle."""

from __future__ import annotations

import click

from tusk.cli.args import REPO
from tusk.cli.errors import EXIT_ERROR
from tusk.cli.output import echo, echo_json, output_option
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


COMMANDS: list[click.Command] = [fsck]
