"""Pipelines, jobs, datums and logs: ``create|update|list|inspect|stop|start|delete pipeline``,
``list|inspect|wait job``, ``list|inspect|restart datum`` and ``tusk logs``.

Thin adapters over ``PpsClient``: parse, call, print. A spec file is read and
validated here first, so a file with a bad second document creates nothing.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shared.api.names import check_name
from shared.platform.errors import InvalidArgument, TuskError
from tusk.cli.output import (
    document_style,
    echo,
    echo_json,
    elapsed,
    format_fields,
    format_table,
    human_size,
    output_option,
    relative_time,
    to_json_text,
)
from tusk.cli.session import closing, naming_context

if TYPE_CHECKING:
    from shared.api.pps_client import PpsClient
    from shared.api.pps_models import DatumInfo, JobInfo, LogLine, PipelineInfo

T = TypeVar("T")

# How often ``logs -f`` asks for new lines when there were none.
FOLLOW_POLL_SECONDS = 0.5
LOG_PAGE = 1000


def run_pps(call: Callable[[PpsClient], Awaitable[T]]) -> T:
    """Run ``call(client)`` against the configured PPS on a fresh event loop."""
    # Imported here, not at the top: ``tusk --help`` lists ``tusk logs`` from this module
    # and must not pay for aiohttp and asyncio (tusk/cli/command_index.py).
    import asyncio

    from shared.api.pps_client import PpsClient
    from tusk.contexts import resolve_endpoints

    endpoints = resolve_endpoints()

    async def with_client() -> T:
        async with PpsClient(endpoints.pps_url, cluster_id=endpoints.cluster_id) as client:
            return await call(client)

    with naming_context(endpoints, endpoints.pps_url):
        return asyncio.run(with_client())


# --- arguments --------------------------------------------------------------------------------

_JOB_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


@dataclass(frozen=True)
class JobRef:
    """A parsed ``pipeline@job`` (the job id may be a unique prefix)."""

    pipeline: str
    job: str


class JobRefType(click.ParamType):
    name = "PIPELINE@JOB"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, JobRef):
            return value
        return parse_job_ref(str(value))


def parse_job_ref(text: str) -> JobRef:
    """``pipeline@job`` → JobRef (raises ``InvalidArgument`` with the expected form)."""
    pipeline, sep, job = text.partition("@")
    if not sep or not _JOB_ID_RE.match(job):
        raise InvalidArgument(f"invalid {text!r}: expected PIPELINE@JOB (a job id or its prefix)")
    return JobRef(check_name("pipeline", pipeline), job)


class PipelineNameType(click.ParamType):
    name = "PIPELINE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return check_name("pipeline", str(value))


JOB_REF = JobRefType()
PIPELINE = PipelineNameType()


# --- spec files -------------------------------------------------------------------------------


def read_spec_text(source: str, what: str = "a pipeline spec") -> str:
    """The text of ``-f FILE`` (``-`` reads stdin)."""
    if source == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        with open(source, "rb") as handle:
            data = handle.read()
        where = source
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{where}: {what} must be UTF-8 text") from None


def read_specs(source: str) -> list[dict[str, Any]]:
    """Every spec document of a file, each validated; one bad document refuses the whole file."""
    text = read_spec_text(source)
    # Imported here: YAML and the spec parser are only needed by these commands.
    from shared.pipeline.spec import load_spec_documents, parse_pipeline_specs

    parse_pipeline_specs(text)
    return load_spec_documents(text)


async def create_pipelines(
    pps: PpsClient, specs: Sequence[dict[str, Any]], *, update: bool, reprocess: bool
) -> list[PipelineInfo]:
    """Create (or update) the pipelines in file order; a failure names the pipeline it hit."""
    done: list[PipelineInfo] = []
    for spec in specs:
        try:
            done.append(await pps.create_pipeline(spec, update=update, reprocess=reprocess))
        except TuskError as exc:
            if len(specs) == 1:
                raise
            name = (spec.get("pipeline") or {}).get("name", "?")
            verb = "updated" if update else "created"
            before = f" (already {verb}: {', '.join(p.name for p in done)})" if done else ""
            raise type(exc)(f"pipeline {name}: {exc.message}{before}", **exc.details) from None
    return done


# --- formatting -------------------------------------------------------------------------------

_INPUT_JOINERS = {"cross": " ⨯ ", "union": " ∪ ", "join": " ⋈ ", "group": ", "}


def input_summary(value: Any) -> str:
    """A spec's input on one line, as pachctl shows it: ``(words:/* ⨯ patterns:/)``."""
    if not isinstance(value, dict) or len(value) != 1:
        return "-"
    ((kind, body),) = value.items()
    if kind == "pfs" and isinstance(body, dict):
        return f"{body.get('repo', '?')}:{body.get('glob', '?')}"
    if kind == "cron" and isinstance(body, dict):
        return f"cron {body.get('name', '?')} {body.get('spec', '?')}"
    if kind in _INPUT_JOINERS and isinstance(body, list):
        inner = _INPUT_JOINERS[kind].join(input_summary(part) for part in body)
        return f"group({inner})" if kind == "group" else f"({inner})"
    return "-"


def pipeline_state(info: PipelineInfo) -> str:
    """``running / success`` — the pipeline's state, then its last job's (as pachctl)."""
    state = info.state.removeprefix("PIPELINE_").lower()
    last = (info.last_job_state or "").removeprefix("JOB_").lower() or "-"
    return f"{state} / {last}"


def pipeline_table(pipelines: Sequence[PipelineInfo]) -> str:
    """NAME VERSION INPUT CREATED STATE / LAST JOB DESCRIPTION."""
    rows = [
        (
            p.name,
            str(p.version),
            input_summary(p.spec.get("input")),
            relative_time(p.created),
            pipeline_state(p),
            str(p.spec.get("description") or ""),
        )
        for p in pipelines
    ]
    headers = ("NAME", "VERSION", "INPUT", "CREATED", "STATE / LAST JOB", "DESCRIPTION")
    return format_table(headers, rows)


def command_line(transform: Any, width: int | None = None) -> str:
    """The transform's words on one line (``stdin`` lines after ``<<<``), cut at ``width``."""
    if not isinstance(transform, dict):
        return "-"
    text = " ".join(str(w) for w in transform.get("cmd") or [])
    stdin = [str(line) for line in transform.get("stdin") or []]
    if stdin:
        text += " <<< " + "; ".join(stdin)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        return text[: width - 1] + "…"
    return text


def pipeline_fields(info: PipelineInfo) -> str:
    """``inspect pipeline``'s readable form."""
    spec = info.spec
    pairs = [
        ("Name", info.name),
        ("Description", str(spec.get("description") or "")),
        ("Version", str(info.version)),
        ("State", info.state),
        ("Last Job State", info.last_job_state or "-"),
        ("Created", relative_time(info.created)),
        ("Updated", relative_time(info.updated)),
        ("Input", input_summary(spec.get("input"))),
        ("Output Branch", str(spec.get("output_branch") or "master")),
        ("Transform", command_line(spec.get("transform"))),
    ]
    if info.reason:
        pairs.append(("Reason", info.reason))
    return format_fields(pairs) + "\nSpec:\n" + _indent(to_json_text(spec))


def history_table(versions: Sequence[dict[str, Any]]) -> str:
    """VERSION CREATED INPUT TRANSFORM, newest first."""
    rows = [
        (
            str(v.get("version")),
            relative_time(v.get("created")),
            input_summary((v.get("spec") or {}).get("input")),
            command_line((v.get("spec") or {}).get("transform"), width=80),
        )
        for v in sorted(versions, key=lambda v: int(v.get("version") or 0), reverse=True)
    ]
    return format_table(("VERSION", "CREATED", "INPUT", "TRANSFORM"), rows)


def job_progress(job: JobInfo) -> str:
    """``processed + skipped / total`` (pachctl's PROGRESS), failed ones appended."""
    text = f"{job.data_processed} + {job.data_skipped} / {job.data_total}"
    return f"{text} ({job.data_failed} failed)" if job.data_failed else text


def job_table(jobs: Sequence[JobInfo]) -> str:
    """ID PIPELINE STARTED DURATION PROGRESS STATE."""
    rows = [
        (
            j.id,
            j.pipeline,
            relative_time(j.started or j.created),
            elapsed(j.started, j.finished),
            job_progress(j),
            j.state,
        )
        for j in jobs
    ]
    return format_table(("ID", "PIPELINE", "STARTED", "DURATION", "PROGRESS", "STATE"), rows)


def job_fields(job: JobInfo) -> str:
    """``inspect job``'s readable form."""
    pairs = [
        ("ID", job.id),
        ("Pipeline", f"{job.pipeline} (version {job.pipeline_version})"),
        ("State", job.state),
        ("Created", relative_time(job.created)),
        ("Started", relative_time(job.started)),
        ("Duration", elapsed(job.started, job.finished)),
        ("Datums", job_progress(job) + " (processed + skipped / total)"),
        ("Datums Failed", str(job.data_failed)),
        ("Datums Recovered", str(job.data_recovered)),
        ("Output Commit", f"{job.pipeline}@{job.output_commit}" if job.output_commit else "-"),
        ("Trigger", job.trigger or "-"),
    ]
    if job.reason:
        pairs.append(("Reason", job.reason))
    inputs = [f"  {c.name}: {c.repo}@{c.branch}={c.id}" for c in job.input_commits]
    return format_fields(pairs) + "\nInput Commits:\n" + ("\n".join(inputs) or "  -")


def datum_matches(datum: DatumInfo) -> str:
    """The datum's input match paths, ``name:path`` when it has several inputs."""
    parts = datum.inputs
    if len(parts) == 1:
        return str(parts[0].get("match", ""))
    return ", ".join(f"{p.get('input', '?')}:{p.get('match', '')}" for p in parts) or "-"


def _datum_time(datum: DatumInfo) -> str:
    if datum.seconds is not None:
        return f"{datum.seconds:.3f}s" if datum.seconds < 10 else f"{datum.seconds:.1f}s"
    return elapsed(datum.started, datum.finished)


def datum_table(datums: Sequence[DatumInfo]) -> str:
    """ID STATE TIME INPUT."""
    rows = [(d.id, d.state, _datum_time(d), datum_matches(d)) for d in datums]
    return format_table(("ID", "STATE", "TIME", "INPUT"), rows)


def datum_fields(datum: DatumInfo, pipeline: str) -> str:
    """``inspect datum``'s readable form, with every input file."""
    pairs = [
        ("ID", datum.id),
        ("Job", f"{pipeline}@{datum.job_id}"),
        ("State", datum.state),
        ("Attempts", str(datum.attempts)),
        ("Time", _datum_time(datum)),
        ("Started", relative_time(datum.started)),
        ("Hash", datum.hash),
        ("Output", f"{_plural(datum.output_files, 'file')}, {human_size(datum.output_bytes)}"),
    ]
    if datum.error:
        pairs.append(("Error", datum.error))
    lines = [format_fields(pairs), "Inputs:"]
    for part in datum.inputs:
        lines.append(
            f"  {part.get('input')}: {part.get('repo')}@{part.get('commit')}"
            f" match {part.get('match')}"
        )
        lines.extend(f"    {path}" for path in part.get("files") or [])
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --- pipelines --------------------------------------------------------------------------------

_SPEC_FILE = click.option(
    "-f",
    "--file",
    "source",
    required=True,
    metavar="FILE",
    help="The spec: JSON or YAML, several documents allowed ('-' reads stdin).",
)


@click.command("pipeline")
@_SPEC_FILE
def create_pipeline(source: str) -> None:
    """Create pipelines from a spec file (in file order); a bad spec creates nothing."""
    specs = read_specs(source)
    run_pps(lambda pps: create_pipelines(pps, specs, update=False, reprocess=False))


@click.command("pipeline")
@_SPEC_FILE
@click.option("--reprocess", is_flag=True, help="Run every datum again, even unchanged ones.")
def update_pipeline(source: str, reprocess: bool) -> None:
    """Replace pipelines' specs (a new version each); a changed transform reprocesses all."""
    specs = read_specs(source)
    run_pps(lambda pps: create_pipelines(pps, specs, update=True, reprocess=reprocess))


@click.command("pipeline")
@output_option
def list_pipeline(output: str) -> None:
    """List pipelines."""
    pipelines = run_pps(lambda pps: pps.list_pipelines())
    if output == "json":
        echo_json([p.to_json() for p in pipelines])
        return
    echo(pipeline_table(pipelines))


@click.command("pipeline")
@click.argument("pipeline", type=PIPELINE)
@click.option("--history", is_flag=True, help="List every spec version instead.")
@output_option
def inspect_pipeline(pipeline: str, history: bool, output: str) -> None:
    """Show a pipeline: state, version and its normalized spec."""
    if history:
        versions = run_pps(lambda pps: pps.pipeline_history(pipeline))
        if output == "json":
            echo_json(versions)
        else:
            echo(history_table(versions))
        return
    info = run_pps(lambda pps: pps.inspect_pipeline(pipeline))
    if output == "json":
        echo_json(info.to_json())
    else:
        echo(pipeline_fields(info))


@click.command("pipeline")
@click.argument("pipeline", type=PIPELINE)
def stop_pipeline(pipeline: str) -> None:
    """Pause a pipeline: no new jobs until it is started again."""
    run_pps(lambda pps: pps.stop_pipeline(pipeline))


@click.command("pipeline")
@click.argument("pipeline", type=PIPELINE)
def start_pipeline(pipeline: str) -> None:
    """Resume a stopped pipeline (a job runs if its inputs moved meanwhile)."""
    run_pps(lambda pps: pps.start_pipeline(pipeline))


@click.command("pipeline")
@click.argument("pipeline", type=PIPELINE)
@click.option("--keep-repo", is_flag=True, help="Keep the pipeline's output repo.")
def delete_pipeline(pipeline: str, keep_repo: bool) -> None:
    """Delete a pipeline, its jobs and (unless --keep-repo) its output repo."""
    run_pps(lambda pps: pps.delete_pipeline(pipeline, keep_repo=keep_repo))


# --- jobs -------------------------------------------------------------------------------------


@click.command("job")
@click.option("-p", "--pipeline", type=PIPELINE, default=None, help="Only this pipeline's jobs.")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@output_option
def list_job(pipeline: str | None, limit: int, output: str) -> None:
    """List jobs, newest first."""
    jobs = run_pps(lambda pps: pps.list_jobs(pipeline, limit=limit))
    if output == "json":
        echo_json([j.to_json() for j in jobs])
        return
    echo(job_table(jobs))


def print_job(job: JobInfo, output: str) -> None:
    if output == "json":
        echo_json(job.to_json())
    else:
        echo(job_fields(job))


@click.command("job")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@output_option
def inspect_job(ref: JobRef, output: str) -> None:
    """Show one job: state, datum counts, input and output commits."""
    print_job(run_pps(lambda pps: pps.inspect_job(ref.pipeline, ref.job)), output)


@click.command("job")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@output_option
def wait_job(ref: JobRef, timeout: float | None, output: str) -> None:
    """Block until a job is done (success or not), then show it."""
    print_job(run_pps(lambda pps: pps.wait_job(ref.pipeline, ref.job, timeout=timeout)), output)


@click.command("job")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@output_option
def stop_job(ref: JobRef, output: str) -> None:
    """Stop an unfinished job: it ends JOB_KILLED, its output commit is finished with that
    error and the output branch keeps its last good commit; then show the job."""
    print_job(run_pps(lambda pps: pps.stop_job(ref.pipeline, ref.job)), output)


@click.command("job")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
def delete_job(ref: JobRef) -> None:
    """Delete a finished job with its datum records and logs (not the newest successful one)."""
    run_pps(lambda pps: pps.delete_job(ref.pipeline, ref.job))


# --- datums -----------------------------------------------------------------------------------


# Column widths of the streamed ``list datum --all`` table (a datum id is 64 hex digits).
_DATUM_WIDTHS = (64, 9, 8)


async def stream_datums(pps: PpsClient, ref: JobRef, output: str) -> None:
    """``list datum --all``: rows (or raw lines) as pages arrive; JSON/YAML as one document."""
    style = document_style()
    streaming = output != "json" or style == "raw"
    if output != "json":
        echo(_fixed_row(("ID", "STATE", "TIME", "INPUT"), _DATUM_WIDTHS))
    collected: list[dict[str, Any]] = []
    async with closing(pps.iter_datums(ref.pipeline, ref.job, all_=True)) as datums:
        async for datum in datums:
            if output != "json":
                row = (datum.id, datum.state, _datum_time(datum), datum_matches(datum) or "-")
                echo(_fixed_row(row, _DATUM_WIDTHS))
            elif streaming:
                echo_json(datum.to_json())
            else:
                collected.append(datum.to_json())
    if not streaming:
        echo_json(collected)


def _fixed_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "   ".join([*padded, *cells[len(widths) :]]).rstrip()


@click.command("datum")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Also the datums the job skipped (streamed page by page; newest successful job).",
)
@output_option
def list_datum(ref: JobRef, all_: bool, output: str) -> None:
    """List the datums a job ran (skipped datums are only counted on the job, unless --all)."""
    if all_:
        run_pps(lambda pps: stream_datums(pps, ref, output))
        return
    datums = run_pps(lambda pps: pps.list_datums(ref.pipeline, ref.job))
    if output == "json":
        echo_json([d.to_json() for d in datums])
        return
    echo(datum_table(datums))


@click.command("datum")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@click.argument("datum")
@output_option
def inspect_datum(ref: JobRef, datum: str, output: str) -> None:
    """Show one datum of a job: state, attempts, error and its input files."""
    info = run_pps(lambda pps: pps.inspect_datum(ref.pipeline, ref.job, datum))
    if output == "json":
        echo_json(info.to_json())
    else:
        echo(datum_fields(info, ref.pipeline))


@click.command("datum")
@click.argument("ref", metavar="PIPELINE@JOB", type=JOB_REF)
@click.argument("datum")
@output_option
def restart_datum(ref: JobRef, datum: str, output: str) -> None:
    """Run a datum again, in a new job over the pipeline's latest inputs; prints that job."""
    job = run_pps(lambda pps: pps.restart_datum(ref.pipeline, ref.job, datum))
    if output == "json":
        echo_json(job.to_json() if job else None)
    elif job is None:
        echo("no job: an input has no finished commit yet")
    else:
        echo(f"{job.pipeline}@{job.id}")


# --- logs -------------------------------------------------------------------------------------


def print_log_line(line: LogLine, output: str) -> None:
    if output == "json":
        echo_json(line.to_json(), compact=True)
    else:
        click.echo(line.message)
        sys.stdout.flush()


async def print_logs(
    pps: PpsClient,
    pipeline: str,
    job: str | None,
    datum: str | None,
    follow: bool,
    output: str,
) -> None:
    """Every matching line, page by page; with ``follow`` keep polling for new ones."""
    after = 0
    while True:
        lines = await pps.logs(pipeline, job=job, datum=datum, after=after, limit=LOG_PAGE)
        for line in lines:
            print_log_line(line, output)
            after = max(after, line.id)
        if len(lines) == LOG_PAGE:
            continue
        if not follow:
            return
        import asyncio  # loaded by run_pps already; kept out of start-up (see run_pps)

        await asyncio.sleep(FOLLOW_POLL_SECONDS)


@click.command("logs")
@click.option("-p", "--pipeline", type=PIPELINE, required=True, help="The pipeline's logs.")
@click.option("--job", default=None, help="Only this job's lines (an id or its prefix).")
@click.option("--datum", default=None, help="Only this datum's lines (an id or its prefix).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@output_option
def logs(pipeline: str, job: str | None, datum: str | None, follow: bool, output: str) -> None:
    """Print the log lines of a pipeline's datums (their commands' stdout and stderr)."""
    with contextlib.suppress(KeyboardInterrupt):
        run_pps(lambda pps: print_logs(pps, pipeline, job, datum, follow, output))


COMMANDS: list[tuple[str, click.Command]] = [
    ("create", create_pipeline),
    ("update", update_pipeline),
    ("list", list_pipeline),
    ("inspect", inspect_pipeline),
    ("stop", stop_pipeline),
    ("stop", stop_job),
    ("start", start_pipeline),
    ("delete", delete_pipeline),
    ("delete", delete_job),
    ("list", list_job),
    ("inspect", inspect_job),
    ("wait", wait_job),
    ("list", list_datum),
    ("inspect", inspect_datum),
    ("restart", restart_datum),
]

TOP_LEVEL: list[click.Command] = [logs]
