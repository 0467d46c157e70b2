"""The console's pages: each handler reads through PFS's and PPS's APIs and renders HTML.

URLs are stable and shareable: /repos/R, /repos/R/commits/C (?path=), /commitsets/ID,
/repos/R/commits/C/diff (?against=, ?path=), /pipelines/P, /pipelines/P/jobs/J (?state=,
?after=), /pipelines/P/jobs/J/datums/D.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.console import charts, dag, preview, textdiff
from services.console.layout import SAFE_HEADERS, crumbs, page
from services.console.live import CHANGES
from services.console.logstream import log_stream
from services.console.markup import Markup, e, join, link, table, url
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitInfo, FileChange
from shared.api.pps_client import PpsClient
from shared.api.pps_models import DATUM_FAILED, DatumInfo, JobInfo, LogLine
from shared.platform.errors import InvalidArgument, NotFound

COMMITS_PAGE = 50
FILES_PAGE = 200
# Datums: a page of the table, the failed ones listed first, and the sample the duration
# histogram is drawn from (datum ids are hashes, so the first ones by id are a fair sample).
DATUMS_PAGE = 100
FAILED_FIRST = 20
DURATION_SAMPLE = 1000
JOB_LOG_LINES = 500
ORIGINS = {
    "user": "user",
    "job": "pipeline job",
    "s3": "S3 gateway",
    "cron": "cron",
    "merge": "merge",
    "revert": "revert",
}
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
    commit_rows = [
        (
            link(url("repos", name, "commits", ci.id), ci.id[:12]),
            ci.branch or "",
            ci.started[:19].replace("T", " "),
            size(ci.size_bytes),
            ci.file_count,
            origin(ci),
            _set_link(ci),
            ci.state,
            ci.description,
        )
        for ci in commits
    ]
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
        f"{table(['Commit', 'Branch', 'Started', 'Size', 'Files', 'Origin', 'Commit set', 'State', 'Description'], commit_rows, id='commits')}"
        f"{more}"
    )
    return page(f"Repo {name}", body)


def origin(ci: CommitInfo) -> str:
    """Who made the commit, in words (PFS records it: user, job, s3, cron, merge, revert)."""
    return ORIGINS.get(ci.origin, ci.origin)


def parents(ci: CommitInfo) -> Markup:
    """The commit's parents as links: a merge commit's two (the branch it was made on
    first, then the one merged in), else one, or "none"."""
    names = [p for p in (ci.parent, ci.second_parent) if p]
    if not names:
        return Markup("none")
    links = [link(url("repos", ci.repo, "commits", p), p[:12]) for p in names]
    return Markup(", ".join(links) + (" (merge)" if len(names) == 2 else ""))


def _set_link(ci: CommitInfo) -> Markup:
    """The commit's set: every commit that carries its id, in every repo."""
    return Markup(
        f'<a href="{e(url("commitsets", ci.id))}" aria-label="{e("commit set " + ci.id)}">'
        f"{e(ci.id[:8])}…</a>"
    )


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
    parent = parents(ci)
    diff = link(url("repos", repo, "commits", ci.id, "diff"), "Diff against parent", cls="button")
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), e(ci.id[:12]))}"
        f"<h1>Commit {e(ci.id)}</h1>"
        f"<dl><dt>Repo</dt><dd>{link(url('repos', repo), repo)}</dd>"
        f"<dt>Branch</dt><dd>{e(ci.branch or '')}</dd><dt>State</dt><dd>{e(ci.state)}</dd>"
        f"<dt>Origin</dt><dd>{e(origin(ci))}</dd><dt>Commit set</dt><dd>{_set_link(ci)}</dd>"
        f"<dt>{'Parents' if ci.second_parent else 'Parent'}</dt><dd>{parent}</dd><dt>Size</dt><dd>{e(size(ci.size_bytes))} in {e(ci.file_count)} files</dd>"
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
    """The files changed against the parent (or ``?against=``); with ``?path=``, that
    file's lines."""
    c = _clients(request)
    repo, ref = request.match_info["repo"], request.match_info["commit"]
    ci = await c.pfs.inspect_commit(repo, ref)
    against = request.query.get("against") or None
    if "path" in request.query:
        return await _file_diff(request, ci, against, _path(request))
    changes = await c.pfs.diff_files(
        repo, ci.id, old_repo=repo if against else None, old_ref=against
    )
    rows = [
        (
            ch.change,
            link(url("repos", repo, "commits", ci.id, path=ch.path), ch.path),
            size(ch.old.size_bytes) if ch.old else "",
            size(ch.new.size_bytes) if ch.new else "",
            link(
                url("repos", repo, "commits", ci.id, "diff", against=against, path=ch.path),
                "lines",
            )
            if _is_file(ch)
            else "",
        )
        for ch in changes
    ]
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), link(url('repos', repo, 'commits', ci.id), ci.id[:12]), e('diff'))}"
        f"<h1>Changes in {e(ci.id[:12])} against {e(against or 'its parent')}</h1>"
        f"{_against_form(against)}"
        f"{table(['Change', 'Path', 'Old size', 'New size', 'Diff'], rows, id='changes')}"
    )
    return page("Diff", body)


def _is_file(change: FileChange) -> bool:
    side = change.new or change.old
    return side is not None and side.type == "file"


def _against_form(against: str | None, path: str | None = None) -> Markup:
    keep = f'<input type="hidden" name="path" value="{e(path)}">' if path else ""
    return Markup(
        f'<form method="get"><label for="against">Against commit</label> '
        f'<input id="against" name="against" value="{e(against or "")}">{keep} '
        f'<button type="submit">Compare</button></form>'
    )


async def _version(c: Clients, repo: str, ref: str | None, path: str) -> tuple[int, bytes] | None:
    """(size, first bytes) of ``path`` at ``ref``; None where the file is not there."""
    if ref is None:
        return None
    try:
        info = await c.pfs.inspect_file(repo, ref, path)
    except NotFound:
        return None
    if info.type != "file":
        return None
    data = await _head(c, repo, ref, path, textdiff.SIDE_BYTES) if info.size_bytes else b""
    return info.size_bytes, data


def _side(version: tuple[int, bytes] | None) -> textdiff.Side:
    if version is None:
        return textdiff.Side("")
    total, data = version
    cut = total > len(data)
    return textdiff.Side(textdiff.decode(data, cut), cut)


async def _file_diff(
    request: web.Request, ci: CommitInfo, against: str | None, path: str
) -> web.Response:
    """One file's lines, old against new; each version's first ``SIDE_BYTES`` compared."""
    c = _clients(request)
    repo = ci.repo
    base = against or ci.parent
    if against is not None:
        base = (await c.pfs.inspect_commit(repo, against)).id  # a 404 for an unknown one
    old, new = await asyncio.gather(_version(c, repo, base, path), _version(c, repo, ci.id, path))
    if old is None and new is None:
        raise NotFound(f"{path} is in neither {ci.id[:12]} nor {(base or 'its parent')[:12]}")
    a, b = _side(old), _side(new)
    if a.text is None or b.text is None:
        result = Markup(
            '<p class="empty">Binary file: no line diff. Download both versions instead.</p>'
        )
    else:
        # difflib is CPU work: off the event loop, so other pages keep answering.
        result = await asyncio.to_thread(textdiff.render, a, b)
    downloads = join(
        Markup(
            f'<a class="button" href="{e(url("repos", repo, "commits", commit, "download", path=path))}">'
            f"Download {e(label)} ({e(size(version[0]))})</a> "
        )
        for label, commit, version in (("old", base, old), ("new", ci.id, new))
        if version is not None and commit is not None
    )
    diff_list = url("repos", repo, "commits", ci.id, "diff", against=against)
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('repos', repo), repo), link(url('repos', repo, 'commits', ci.id), ci.id[:12]), link(diff_list, 'diff'), e(path))}"
        f"<h1>{e(path)}</h1><p>{e(ci.id[:12])} against "
        f"{e(base[:12] if base else 'nothing (no parent)')}"
        f"{' · added' if old is None else ' · deleted' if new is None else ''}</p>"
        f"{_against_form(against, path)}<p>{downloads}</p>{result}"
    )
    return page(f"Diff of {path}", body)


# ------------------------------------------------------------------------------ commit set


@routes.get("/commitsets/{id}")
async def commit_set_page(request: web.Request) -> web.Response:
    """A commit set: the commit a user made and every output computed from it, one id."""
    c = _clients(request)
    found = await c.pfs.inspect_commit_set(request.match_info["id"])
    rows = [
        (
            link(url("repos", ci.repo), ci.repo),
            ci.branch or "",
            link(url("repos", ci.repo, "commits", ci.id), ci.id[:12]),
            origin(ci),
            ci.state + (" (failed)" if ci.error else ""),
            size(ci.size_bytes),
        )
        for ci in found.commits
    ]
    pending = table(["Branch still to get a commit of the set"], [(p,) for p in found.pending])
    body = Markup(
        f"{crumbs(link('/', 'Overview'), e('commit set ' + found.id[:12]))}"
        f"<h1>Commit set {e(found.id)} {state_badge(found.state)}</h1>"
        f"<p>One id names a commit and every output computed from it, in every repo.</p>"
        f"{table(['Repo', 'Branch', 'Commit', 'Origin', 'State', 'Size'], rows, id='set-commits')}"
        f"{pending if found.pending else Markup('')}"
    )
    return page(f"Commit set {found.id[:12]}", body, poll=found.state == "running")


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
    """A job: progress, inputs, its datums a page at a time (failed ones first, filters by
    state with the job's counts), a duration histogram, its log lines followed live."""
    c = _clients(request)
    name, job_id = request.match_info["pipeline"], request.match_info["job"]
    job = await c.pps.inspect_job(name, job_id)
    wanted = request.query.get("state", "").upper() or None
    after = request.query.get("after", "")
    limit = _int(request.query.get("limit"), DATUMS_PAGE)
    if not 1 <= limit <= DURATION_SAMPLE:
        raise InvalidArgument(f"limit: from 1 to {DURATION_SAMPLE}")
    # Never the whole job: a page of the table, a few failed ones, a bounded sample.
    shown, cursor = await c.pps.datums_page(
        name, job.id, after=after, limit=limit, only_state=wanted
    )
    failed: list[DatumInfo] = []
    if job.data_failed and wanted is None and not after:
        failed, _ = await c.pps.datums_page(
            name, job.id, limit=FAILED_FIRST, only_state=DATUM_FAILED
        )
    if wanted is None and not after and (cursor is None or limit >= DURATION_SAMPLE):
        sample, more = shown, cursor is not None
    else:
        sample, more_cursor = await c.pps.datums_page(name, job.id, limit=DURATION_SAMPLE)
        more = more_cursor is not None
    filters = [link(url("pipelines", name, "jobs", job.id), f"all ({job.data_total})")]
    filters += [
        link(url("pipelines", name, "jobs", job.id, state=state.lower()), f"{label} ({n})")
        for state, label, n in _datum_counts(job)
        if n or state == "FAILED"
    ]
    others = await c.pps.list_jobs(name, limit=10)
    times = [d.seconds for d in sample if d.seconds is not None]
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
    failed_part = (
        Markup(
            f"<h2>Failed datums</h2><p>{e(len(failed))} of {e(job.data_failed)} shown · "
            f"{link(url('pipelines', name, 'jobs', job.id, state='failed'), 'all failed datums')}</p>"
            f"{_datum_table(name, job.id, failed, 'failed-datums')}"
        )
        if failed
        else Markup("")
    )
    next_page = (
        link(
            url("pipelines", name, "jobs", job.id, state=wanted and wanted.lower(), after=cursor),
            "Next datums →",
            cls="button",
        )
        if cursor
        else Markup("")
    )
    first_page = (
        link(url("pipelines", name, "jobs", job.id, state=wanted and wanted.lower()), "First page")
        if after
        else Markup("")
    )
    heading = f"Datums{' · ' + wanted.lower() if wanted else ''}"
    if wanted == "SKIPPED":
        listing = Markup(
            f'<p class="note">{e(job.data_skipped)} datums were skipped: their output from an '
            "earlier job was reused (skipped datums are counted, not listed per job).</p>"
        )
    else:
        listing = Markup(f"{_datum_table(name, job.id, shown, 'datums')}{first_page} {next_page}")
    sample_note = (
        f"from a sample of the first {len(sample)} datums by id (ids are hashes: a fair sample)"
        if more
        else f"all {len(sample)} datums listed"
    )
    running = job.state in RUNNING_JOBS
    logs = await c.pps.logs(name, job=job.id, limit=JOB_LOG_LINES)
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('pipelines', name), name), e(job.id[:12]))}"
        f"<h1>Job {e(job.id)} {state_badge(job.state)}</h1>"
        f"<p>{progress(job)} · {e(duration(job.started, job.finished))}"
        f"{e(' · ' + job.reason) if job.reason else ''} · output {output}</p>"
        f"<h2>Inputs</h2>{table(['Input', 'Repo', 'Commit'], inputs)}"
        f"{failed_part}"
        f"<h2>{e(heading)}</h2>"
        f'<nav aria-label="Filter datums by state" class="filters">'
        f"{join(Markup(f'{x} ') for x in filters)}</nav>{listing}"
        f'<h2>Datum durations</h2><p class="note">{e(sample_note)}</p>{charts.histogram(times)}'
        f"<h2>Logs</h2>{_log_panel('job-logs', name, job.id, None, logs, running)}"
        f"<h2>Recent jobs of {e(name)}</h2>{table(JOB_HEADERS, [_job_row(j) for j in others], id='recent-jobs')}"
    )
    running = running or any(j.state in RUNNING_JOBS for j in others)
    return page(f"Job {job.id[:12]}", body, poll=running)


def _datum_counts(job: JobInfo) -> list[tuple[str, str, int]]:
    """(state, label, count) from the job's counters: no datum is read to count them."""
    settled = job.data_processed + job.data_failed + job.data_recovered + job.data_skipped
    return [
        ("FAILED", "failed", job.data_failed),
        ("SUCCESS", "success", job.data_processed),
        ("RECOVERED", "recovered", job.data_recovered),
        ("SKIPPED", "skipped", job.data_skipped),
        ("STARTING", "running", max(0, job.data_total - settled)),
    ]


def _datum_table(pipeline: str, job_id: str, datums: list[DatumInfo], ident: str) -> Markup:
    rows = [
        (
            link(url("pipelines", pipeline, "jobs", job_id, "datums", d.id), d.id[:12]),
            state_badge(d.state),
            ", ".join(str(i.get("match", "")) for i in d.inputs),
            f"{d.seconds:.2f} s" if d.seconds is not None else "",
            d.attempts,
            (d.error or "").splitlines()[0] if d.error else "",
        )
        for d in datums
    ]
    return table(["Datum", "State", "Inputs", "Time", "Attempts", "Error"], rows, id=ident)


def _log_panel(
    ident: str,
    pipeline: str,
    job_id: str,
    datum: str | None,
    lines: list[LogLine],
    follow: bool,
) -> Markup:
    """Log lines; while the job runs, the page follows new ones over an event stream
    (``data-follow``: the stream's URL, after the last line shown)."""
    text = "".join(
        f"{line.ts[11:19]} {(line.datum_id or '')[:8] + ' ' if datum is None else ''}"
        f"{line.message}\n"
        for line in lines
    )
    attrs = f' id="{e(ident)}" aria-live="off" tabindex="0"'
    if follow:
        last = lines[-1].id if lines else 0
        stream = url("pipelines", pipeline, "jobs", job_id, "logs", datum=datum, after=last)
        attrs += f' data-follow="{e(stream)}"'
    placeholder = "" if lines or follow else "no log lines"
    return Markup(f'<pre class="logs"{attrs}>{e(text or placeholder)}</pre>')


@routes.get("/pipelines/{pipeline}/jobs/{job}/logs")
async def job_logs(request: web.Request) -> web.StreamResponse:
    """The job's (``?datum=``: one datum's) log lines as server-sent events, live."""
    return await log_stream(
        request,
        _clients(request).pps,
        request.app[CHANGES],
        request.match_info["pipeline"],
        request.match_info["job"],
        request.query.get("datum") or None,
    )


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
    running = d.state == "STARTING" and job.state in RUNNING_JOBS
    body = Markup(
        f"{crumbs(link('/', 'Overview'), link(url('pipelines', name), name), link(url('pipelines', name, 'jobs', job.id), job.id[:12]), e(d.id[:12]))}"
        f"<h1>Datum {e(d.id)} {state_badge(d.state)}</h1>"
        f"<dl><dt>Attempts</dt><dd>{e(d.attempts)}</dd><dt>Time</dt>"
        f"<dd>{e(f'{d.seconds:.2f} s' if d.seconds is not None else '')}</dd>"
        f"<dt>Output</dt><dd>{e(d.output_files)} files, {e(size(d.output_bytes))}</dd></dl>"
        f"{error}<h2>Input files</h2>{table(['Input', 'Files'], rows, id='inputs')}"
        f"<h2>Logs</h2>{_log_panel('datum-logs', name, job.id, d.id, logs, running)}"
    )
    return page(f"Datum {d.id[:12]}", body, poll=running)


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
