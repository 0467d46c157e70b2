"""The console's pages: each handler reads through PFS's and PPS's APIs and renders HTML.

URLs are stable and shareable: /repos/R, /repos/R/commits/C (?path=), /pipelines/P,
/pipelines/P/jobs/J (?state=), /pipelines/P/jobs/J/datums/D.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.console import charts, dag, preview
from services.console.layout import SAFE_HEADERS, crumbs, page
from services.console.markup import Markup, e, join, link, table, url
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.api.pps_models import DATUM_FAILED, JobInfo
from shared.platform.errors import InvalidArgument, NotFound

COMMITS_PAGE = 50
FILES_PAGE = 200
RUNNING_JOBS = {"JOB_CREATED", "JOB_STARTING", "JOB_RUNNING", "JOB_FINISHING"}


@dataclass(frozen=True)
class Clients:
    pfs: PfsClient
    pps: PpsClient


CLIENTS: web.AppKey[Clients] = web.AppKey("console_clients", Clients)
routes = web.RouteTableDef()


def _clients(request: web.Request) -> Clients:
    return request.app[CLIENTS]


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def duration(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    try:
        t0 = datetime.fromisoformat(start)
        t1 = datetime.fromisoformat(end) if end else datetime.now(t0.tzinfo)
    except ValueError:
        return ""
    seconds = max(0.0, (t1 - t0).total_seconds())
    text = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    return text if end else text + " so far"


def state_badge(state: str) -> Markup:
    short = state.removeprefix("JOB_").removeprefix("PIPELINE_").lower()
    kind = {
        "success": "ok",
        "running": "run",
        "failure": "bad",
        "failed": "bad",
        "killed": "bad",
        "crashing": "bad",
        "unrunnable": "bad",
        "starting": "run",
        "finishing": "run",
        "created": "run",
        "skipped": "skip",
        "recovered": "ok",
        "paused": "paused",
        "standby": "ok",
    }.get(short, "unknown")
    return Markup(f'<span class="badge {kind}">{e(short)}</span>')


def progress(job: JobInfo) -> Markup:
    done = job.data_processed + job.data_skipped
    total = max(job.data_total, done)
    label = f"{done} of {total} datums ({job.data_skipped} skipped, {job.data_failed} failed)"
    return Markup(
        f'<progress max="{max(total, 1)}" value="{done}" aria-label="{e(label)}"></progress> '
        f'<span class="count">{e(done)}/{e(total)}</span>'
    )


# ----------------------------------------------------------------------------- overview


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    c = _clients(request)
    repos = await c.pfs.list_repos()
    pipelines = await c.pps.list_pipelines()
    outputs = {p.name for p in pipelines}
    nodes = [dag.Node(r.name, "repo") for r in repos if r.name not in outputs]
    nodes += [dag.Node(p.name, "pipeline", p.state, p.last_job_state or "") for p in pipelines]
    flowing = {p.name for p in pipelines if p.last_job_state in RUNNING_JOBS}
    edges = [
        dag.Edge(src, p.name, p.name in flowing)
        for p in pipelines
        for src in dag.input_repos(p.spec.get("input"))
    ]
    repo_rows = [
        (link(url("repos", r.name), r.name), size(r.size_bytes), ", ".join(r.branches))
        for r in repos
    ]
    pipe_rows = [
        (link(url("pipelines", p.name), p.name), state_badge(p.state), p.last_job_state or "")
        for p in pipelines
    ]
    body = Markup(
        f"<h1>Overview</h1>{dag.render(nodes, edges)}"
        f'<div class="cols"><section><h2>Repos</h2>{table(["Repo", "Size", "Branches"], repo_rows)}'
        f"</section><section><h2>Pipelines</h2>"
        f"{table(['Pipeline', 'State', 'Last job'], pipe_rows)}</section></div>"
    )
    return page("Overview", body)


# --------------------------------------------------------------------------------- repo


@routes.get("/repos/{repo}")
async def repo_page(request: web.Request) -> web.Response:
    c = _clients(request)
    name = request.match_info["repo"]
    repo = await c.pfs.inspect_repo(name)
    branches = await c.pfs.list_branches(name)
    branch = request.query.get("branch") or None
    before = request.query.get("before") or None
    commits, cursor = await c.pfs.list_commits(name, branch, limit=COMMITS_PAGE, before=before)
    branch_rows = [
        (
            link(url("repos", name, branch=b.name), b.name),
            link(url("repos", name, "commits", b.head), b.head[:12]) if b.head else "—",
            ", ".join(b.provenance),
        )
        for b in branches
    ]
    commit_rows = []
    for ci in commits:
        if ci.provenance and any(p.repo != name for p in ci.provenance):
            origin = "pipeline job"
        else:
            origin = "user"
        commit_rows.append(
            (
                link(url("repos", name, "commits", ci.id), ci.id[:12]),
                ci.branch or "",
                ci.started[:19].replace("T", " "),
                size(ci.size_bytes),
                ci.file_count,
                origin,
                ci.state,
                ci.description,
            )
        )
    more = (
        link(url("repos", name, branch=branch, before=cursor), "Older commits →", cls="button")
        if cursor
        else Markup("")
    )
    body = Markup(
        f"{crumbs(link('/', 'Overview'), e(name))}<h1>Repo {e(name)}</h1>"
        f"<p>{e(repo.description)}</p><h2>Branches</h2>"
        f"{table(['Branch', 'Head', 'Provenance'], branch_rows)}"
        f"<h2>Commits{e(' on ' + branch) if branch else ''}</h2>"
        f"{table(['Commit', 'Branch', 'Started', 'Size', 'Files', 'Origin', 'State', 'Description'], commit_rows, id='commits')}"
        f"{more}"
    )
    return page(f"Repo {name}", body)


# ------------------------------------------------------------------------------- commit


def _path(request: web.Request) -> str:
    path = request.query.get("path", "/") or "/"
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


@routes.get("/repos/{repo}/commits/{commit}")
async def commit_page(request: web.Request) -> web.Response:
    c = _clients(request)
    repo, ref = request.match_info["repo"], request.match_info["commit"]
    ci = await c.pfs.inspect_commit(repo, ref)
    path = _path(request)
    after = request.query.get("after") or None
    files, cursor = await c.pfs.list_files(repo, ci.id, path, limit=FILES_PAGE, after=after)
    if len(files) == 1 and files[0].path.rstrip("/") == path.rstrip("/") and files[0].type != "dir":
        return await _file_view(request, repo, ci.id, path)
    rows = []
    if path != "/":
        rows.append(
            (
                link(
                    url("repos", repo, "commits", ci.id, path=posixpath.dirname(path.rstrip("/"))),
                    "../",
                ),
                "",
                "",
            )
        )
    for f in files:
        name = posixpath.basename(f.path.rstrip("/")) + ("/" if f.type == "dir" else "")
        rows.append(
            (
                link(url("repos", repo, "commits", ci.id, path=f.path), name),
                f.type,
                size(f.size_bytes),
            )
        )
    more = (
        link(
            url("repos", repo, "commits", ci.id, path=path, after=cursor),
            "More files →",
            cls="button",
        )
        if cursor
        else Markup("")
    )
    prov = [
        (
            link(url("repos", p.repo), p.repo),
            p.branch or "",
            link(url("repos", p.repo, "commits", p.id), p.id[:12]),
        )
        for p in ci.provenance
    ]
    downstream = await c.pfs.commit_subvenance(repo, ci.id)
    down = [
        (
            link(url("repos", d.repo), d.repo),
            d.branch or "",
            link(url("repos", d.repo, "commits", d.id), d.id[:12]),
        )
        for d in downstream
    ]
    parent = (
        link(url("repos", repo, "commits", ci.parent), ci.parent[:12])
        if ci.parent
        else Markup("none")
    )
    diff = link(url("repos", repo, "commits", ci.id, "diff"), "Diff against parent", cls="button")
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), e(ci.id[:12]))}"
        f"<h1>Commit {e(ci.id)}</h1>"
        f"<dl><dt>Repo</dt><dd>{link(url('repos', repo), repo)}</dd>"
        f"<dt>Branch</dt><dd>{e(ci.branch or '')}</dd><dt>State</dt><dd>{e(ci.state)}</dd>"
        f"<dt>Parent</dt><dd>{parent}</dd><dt>Size</dt><dd>{e(size(ci.size_bytes))} in {e(ci.file_count)} files</dd>"
        f"<dt>Description</dt><dd>{e(ci.description)}</dd></dl>{diff}"
        f"<h2>Files in {e(path)}</h2>{table(['Name', 'Type', 'Size'], rows, id='files')}{more}"
        f"<h2>Provenance (upstream)</h2>{table(['Repo', 'Branch', 'Commit'], prov)}"
        f"<h2>Subvenance (downstream)</h2>{table(['Repo', 'Branch', 'Commit'], down)}"
    )
    return page(f"Commit {ci.id[:12]}", body)


async def _head(c: Clients, repo: str, ref: str, path: str, limit: int) -> bytes:
    data = bytearray()
    async for block in c.pfs.get_file(repo, ref, path, length=limit):
        data += block
    return bytes(data)


async def _file_view(request: web.Request, repo: str, commit: str, path: str) -> web.Response:
    c = _clients(request)
    info = await c.pfs.inspect_file(repo, commit, path)
    data = await _head(c, repo, commit, path, preview.PREVIEW_BYTES) if info.size_bytes else b""
    truncated = info.size_bytes > len(data)
    raw = url("repos", repo, "commits", commit, "raw", path=path)
    download = url("repos", repo, "commits", commit, "download", path=path)
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), link(url('repos', repo, 'commits', commit), commit[:12]), e(path))}"
        f"<h1>{e(path)}</h1><p>{e(size(info.size_bytes))} · "
        f'<a class="button" href="{e(download)}" download>Download</a></p>'
        f"{preview.render(path, data, truncated, raw)}"
    )
    return page(path, body)


@routes.get("/repos/{repo}/commits/{commit}/raw")
async def raw_image(request: web.Request) -> web.StreamResponse:
    """An image for ``<img>``, with its image type; anything else is refused (never served
    as HTML, whatever its content)."""
    path = _path(request)
    kind = preview.image_type(path)
    if kind is None:
        raise InvalidArgument(f"{path} is not an image the console shows inline; download it")
    return await _stream(request, path, kind, inline=True)


@routes.get("/repos/{repo}/commits/{commit}/download")
async def download(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _path(request), "application/octet-stream", inline=False)


async def _stream(
    request: web.Request, path: str, kind: str, *, inline: bool
) -> web.StreamResponse:
    c = _clients(request)
    repo, ref = request.match_info["repo"], request.match_info["commit"]
    info = await c.pfs.inspect_file(repo, ref, path)
    if info.type == "dir":
        raise InvalidArgument(f"{path} is a directory")
    name = posixpath.basename(path).replace('"', "_").replace("\\", "_")
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    disposition = "inline" if inline else "attachment"
    response = web.StreamResponse(
        headers={
            **SAFE_HEADERS,
            "Content-Type": kind,
            "Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}",
            "Content-Length": str(info.size_bytes),
        }
    )
    await response.prepare(request)
    async for block in c.pfs.get_file(repo, ref, path):
        await response.write(block)
    await response.write_eof()
    return response


@routes.get("/repos/{repo}/commits/{commit}/diff")
async def diff_page(request: web.Request) -> web.Response:
    c = _clients(request)
    repo, ref = request.match_info["repo"], request.match_info["commit"]
    ci = await c.pfs.inspect_commit(repo, ref)
    against = request.query.get("against") or None
    changes = await c.pfs.diff_files(
        repo, ci.id, old_repo=repo if against else None, old_ref=against
    )
    rows = [
        (
            ch.change,
            link(url("repos", repo, "commits", ci.id, path=ch.path), ch.path),
            size(ch.old.size_bytes) if ch.old else "",
            size(ch.new.size_bytes) if ch.new else "",
        )
        for ch in changes
    ]
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), link(url('repos', repo, 'commits', ci.id), ci.id[:12]), e('diff'))}"
        f"<h1>Changes in {e(ci.id[:12])} against {e(against or 'its parent')}</h1>"
        f'<form method="get"><label for="against">Against commit</label> '
        f'<input id="against" name="against" value="{e(against or "")}"> <button type="submit">Compare</button></form>'
        f"{table(['Change', 'Path', 'Old size', 'New size'], rows, id='changes')}"
    )
    return page("Diff", body)


# ----------------------------------------------------------------------------- pipeline


def _job_row(job: JobInfo) -> tuple[Markup | str, ...]:
    return (
        link(url("pipelines", job.pipeline, "jobs", job.id), job.id[:12]),
        state_badge(job.state),
        progress(job),
        job.created[:19].replace("T", " "),
        duration(job.started, job.finished),
    )


JOB_HEADERS = ["Job", "State", "Progress", "Created", "Duration"]


@routes.get("/pipelines/{pipeline}")
async def pipeline_page(request: web.Request) -> web.Response:
    c = _clients(request)
    name = request.match_info["pipeline"]
    p = await c.pps.inspect_pipeline(name)
    jobs = await c.pps.list_jobs(name, limit=50)
    versions = {int(v["version"]): v["spec"] for v in await c.pps.pipeline_history(name)}
    shown = _int(request.query.get("version"), p.version)
    if shown not in versions:
        raise NotFound(f"pipeline {name} has no version {shown}")
    base = _int(
        request.query.get("against"), max((v for v in versions if v < shown), default=shown)
    )
    if base not in versions:
        raise NotFound(f"pipeline {name} has no version {base}")
    spec_text = json.dumps(versions[shown], indent=2, sort_keys=True)
    version_links = join(
        Markup(f"{link(url('pipelines', name, version=v), f'version {v}')} ")
        for v in sorted(versions)
    )
    spec_diff = (
        charts.text_diff(
            json.dumps(versions[base], indent=2, sort_keys=True),
            spec_text,
            f"version {base}",
            f"version {shown}",
        )
        if base != shown
        else Markup("")
    )
    body = Markup(
        f"{crumbs(link('/', 'Overview'), e(name))}<h1>Pipeline {e(name)} {state_badge(p.state)}</h1>"
        f"<p>Version {e(p.version)} · output repo {link(url('repos', name), name)}"
        f"{e(' · ' + p.reason) if p.reason else ''}</p>"
        f"<h2>Jobs</h2>{table(JOB_HEADERS, [_job_row(j) for j in jobs], id='jobs')}"
        f'<h2>Spec, version {e(shown)}</h2><nav aria-label="Spec versions">{version_links}</nav>'
        f'<div class="cols"><section><pre>{e(spec_text)}</pre></section>'
        f"<section>{Markup('<h3>Changes from version ' + e(base) + '</h3>') if base != shown else Markup('')}"
        f"{spec_diff}</section></div>"
    )
    return page(f"Pipeline {name}", body, poll=any(j.state in RUNNING_JOBS for j in jobs))


# ---------------------------------------------------------------------------------- job


@routes.get("/pipelines/{pipeline}/jobs/{job}")
async def job_page(request: web.Request) -> web.Response:
    c = _clients(request)
    name, job_id = request.match_info["pipeline"], request.match_info["job"]
    job = await c.pps.inspect_job(name, job_id)
    datums = await c.pps.list_datums(name, job.id)
    wanted = request.query.get("state", "").upper()
    counts: dict[str, int] = {}
    for d in datums:
        counts[d.state] = counts.get(d.state, 0) + 1
    shown = [d for d in datums if not wanted or d.state == wanted]
    shown.sort(key=lambda d: (d.state != DATUM_FAILED, d.id))
    filters = [link(url("pipelines", name, "jobs", job.id), f"all ({len(datums)})")]
    filters += [
        link(url("pipelines", name, "jobs", job.id, state=s.lower()), f"{s.lower()} ({n})")
        for s, n in sorted(counts.items())
    ]
    rows = [
        (
            link(url("pipelines", name, "jobs", job.id, "datums", d.id), d.id[:12]),
            state_badge(d.state),
            ", ".join(str(i.get("match", "")) for i in d.inputs),
            f"{d.seconds:.2f} s" if d.seconds is not None else "",
            d.attempts,
            (d.error or "").splitlines()[0] if d.error else "",
        )
        for d in shown
    ]
    others = await c.pps.list_jobs(name, limit=10)
    times = [d.seconds for d in datums if d.seconds is not None]
    inputs = [
        (
            i.name,
            link(url("repos", i.repo), i.repo),
            link(url("repos", i.repo, "commits", i.id), i.id[:12]),
        )
        for i in job.input_commits
    ]
    output = (
        link(url("repos", name, "commits", job.output_commit), job.output_commit[:12])
        if job.output_commit
        else Markup("none yet")
    )
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('pipelines', name), name), e(job.id[:12]))}"
        f"<h1>Job {e(job.id)} {state_badge(job.state)}</h1>"
        f"<p>{progress(job)} · {e(duration(job.started, job.finished))}"
        f"{e(' · ' + job.reason) if job.reason else ''} · output {output}</p>"
        f"<h2>Inputs</h2>{table(['Input', 'Repo', 'Commit'], inputs)}"
        f'<h2>Datums</h2><nav aria-label="Filter datums by state" class="filters">'
        f"{join(Markup(f'{x} ') for x in filters)}</nav>"
        f"{table(['Datum', 'State', 'Inputs', 'Time', 'Attempts', 'Error'], rows, id='datums')}"
        f"<h2>Datum durations</h2>{charts.histogram(times)}"
        f"<h2>Recent jobs of {e(name)}</h2>{table(JOB_HEADERS, [_job_row(j) for j in others], id='recent-jobs')}"
    )
    running = job.state in RUNNING_JOBS or any(j.state in RUNNING_JOBS for j in others)
    return page(f"Job {job.id[:12]}", body, poll=running)


def _input_files(datum_input: dict[str, Any]) -> Markup:
    """A datum input's files, each a link into the commit it was read from."""
    repo, commit = str(datum_input.get("repo", "")), str(datum_input.get("commit", ""))
    files = [str(f) for f in datum_input.get("files", [])]
    if not (repo and commit):
        return e(", ".join(files) or datum_input.get("match", ""))
    return join(Markup(f"{link(url('repos', repo, 'commits', commit, path=f), f)} ") for f in files)


@routes.get("/pipelines/{pipeline}/jobs/{job}/datums/{datum}")
async def datum_page(request: web.Request) -> web.Response:
    c = _clients(request)
    name, job_id, datum_id = (request.match_info[k] for k in ("pipeline", "job", "datum"))
    job = await c.pps.inspect_job(name, job_id)
    d = await c.pps.inspect_datum(name, job.id, datum_id)
    logs = await c.pps.logs(name, job=job.id, datum=d.id, limit=1000)
    rows = [(str(i.get("input", "")), _input_files(i)) for i in d.inputs]
    error = (
        Markup(f'<h2>Error</h2><pre class="error">{e(d.error)}</pre>') if d.error else Markup("")
    )
    log_text = "\n".join(f"{line.ts[11:19]} {line.message}" for line in logs)
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('pipelines', name), name), link(url('pipelines', name, 'jobs', job.id), job.id[:12]), e(d.id[:12]))}"
        f"<h1>Datum {e(d.id)} {state_badge(d.state)}</h1>"
        f"<dl><dt>Attempts</dt><dd>{e(d.attempts)}</dd><dt>Time</dt>"
        f"<dd>{e(f'{d.seconds:.2f} s' if d.seconds is not None else '')}</dd>"
        f"<dt>Output</dt><dd>{e(d.output_files)} files, {e(size(d.output_bytes))}</dd></dl>"
        f"{error}<h2>Input files</h2>{table(['Input', 'Files'], rows, id='inputs')}"
        f'<h2>Logs</h2><pre class="logs">{e(log_text or "no log lines")}</pre>'
    )
    return page(f"Datum {d.id[:12]}", body, poll=d.state == "STARTING")


def _int(text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"not a number: {text!r}") from None


def not_found_page(message: str) -> web.Response:
    body = Markup(
        f'<h1>Not found</h1><p class="error-line">{e(message)}</p><p>{link("/", "Back to the overview")}</p>'
    )
    return page("Not found", body, status=404)


__all__ = ["CLIENTS", "Clients", "NotFound", "not_found_page", "routes"]
