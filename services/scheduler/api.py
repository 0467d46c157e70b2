"""The scheduler's HTTP API for jobs, datums and logs: what PPS asks of the jobs' owner.

PPS serves users the same read paths (``/v1/jobs``, ``/v1/pipelines/{name}/jobs/…``) by
asking here, so Pachyderm users keep one endpoint; the rest is for PPS alone: a pipeline
changed (with the job it asks for), a pipeline deleted, a datum restarted, a job to stop.
Keep the scheduler's port private, as PPS's internal endpoints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from services.scheduler import store
from services.scheduler.engine import Engine
from shared.api.jobs_endpoints import (
    DATUM_PAGE_PARAMETERS,
    DATUM_PAGE_QUERY,
    JOB_LIST_QUERY,
    LOG_QUERY,
)
from shared.api.pps_models import JobRequest, PipelineInfo
from shared.platform.db import acquire
from shared.platform.envelope import decode_json
from shared.platform.errors import InvalidArgument
from shared.platform.http import (
    MIB,
    NAME,
    STRING,
    Query,
    endpoint,
    field,
    json_body,
    query_bool,
    query_int,
    read_json,
)

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
routes = web.RouteTableDef()
# A pipeline's record carries its spec, which PPS takes up to this size.
PIPELINE_BODY_LIMIT = 9 * MIB


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE]


async def _pipeline_body(request: web.Request) -> tuple[PipelineInfo, dict[str, object]]:
    """PPS's record of the pipeline the path names, and the whole body."""
    body = await read_json(request)
    info = pipeline_record(field(body, "pipeline", dict))
    if info.name != request.match_info["name"]:
        raise InvalidArgument(f"pipeline {info.name} sent for {request.match_info['name']}")
    # A spec the scheduler could not run is refused here, not met later in every loop.
    _engine(request).specs.parse(info.name, info.version, info.spec)
    return info, body


def pipeline_record(value: dict[str, Any]) -> PipelineInfo:
    """A ``PipelineInfo`` as PPS sends it; anything else is refused with the field."""
    info = decode_json(PipelineInfo, value, "pipeline")
    if not isinstance(info.spec, dict):
        raise InvalidArgument("pipeline.spec: expected an object")
    if not 0 < info.version < 1 << 31:
        raise InvalidArgument("pipeline.version: expected a positive 32-bit integer")
    for name in ("created", "updated"):
        try:
            moment = datetime.fromisoformat(getattr(info, name))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise InvalidArgument(f"pipeline.{name}: expected a time with its zone (RFC 3339)")
    return info


def job_request(value: object) -> JobRequest | None:
    return None if value is None else decode_json(JobRequest, value, "job")


@routes.put("/v1/pipelines/{name}")
@endpoint(
    body=json_body(
        {"pipeline": {"type": "object"}, "job": {"type": ["object", "null"]}},
        required=["pipeline"],
        max_bytes=PIPELINE_BODY_LIMIT,
    )
)
async def pipeline_changed(request: web.Request) -> web.Response:
    """PPS's record of a pipeline as it is now, and the job the change asks for (if any)."""
    info, body = await _pipeline_body(request)
    job = await _engine(request).requests.pipeline_changed(info, job_request(body.get("job")))
    return web.json_response({"job": job.to_json() if job else None})


@routes.delete("/v1/pipelines/{name}")
async def forget_pipeline(request: web.Request) -> web.Response:
    """A deleted pipeline: its jobs, datums, logs and output records go."""
    async with acquire(_engine(request).pool) as conn:
        await store.forget_pipeline(conn, request.match_info["name"])
    _engine(request).workers.poke()
    return web.json_response({})


@routes.get("/v1/last-job-states")
@endpoint(query=[Query("pipeline", NAME)])
async def last_job_states(request: web.Request) -> web.Response:
    """Each pipeline's newest job's state (?pipeline= for one)."""
    async with acquire(_engine(request).pool) as conn:
        states = await store.last_job_states(conn, request.query.get("pipeline") or None)
    return web.json_response({"states": states})


@routes.get("/v1/jobs")
@endpoint(query=JOB_LIST_QUERY)
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs, newest first (?pipeline=&limit=)."""
    limit = query_int(request, "limit", 100, low=1, high=10000)
    async with acquire(_engine(request).pool) as conn:
        jobs = await store.list_jobs(conn, request.query.get("pipeline") or None, limit)
    return web.json_response({"jobs": [j.to_json() for j in jobs]})


@routes.get("/v1/pipelines/{name}/jobs/{job}")
async def inspect_job(request: web.Request) -> web.Response:
    """A job (a unique prefix of its id is enough)."""
    async with acquire(_engine(request).pool) as conn:
        job = await store.find_job(conn, request.match_info["name"], request.match_info["job"])
    return web.json_response(job.to_json())


@routes.post("/v1/pipelines/{name}/jobs/{job}/stop")
@endpoint(body=json_body({"reason": STRING}, required=["reason"]))
async def stop_job(request: web.Request) -> web.Response:
    """Ask for an unfinished job to end JOB_KILLED; ``asked`` is false if it had ended."""
    reason = field(await read_json(request), "reason", str)
    async with acquire(_engine(request).pool) as conn:
        job = await store.find_job(conn, request.match_info["name"], request.match_info["job"])
        asked = await store.request_stop(conn, job.id, reason)
    if asked:
        _engine(request).wake()
    return web.json_response({"asked": asked, "job": job.to_json()})


@routes.delete("/v1/pipelines/{name}/jobs/{job}")
async def delete_job(request: web.Request) -> web.Response:
    """A finished job and its datum records (not the pipeline's newest success)."""
    async with acquire(_engine(request).pool) as conn:
        job = await store.find_job(conn, request.match_info["name"], request.match_info["job"])
        await store.delete_finished_job(conn, job.id)
    return web.json_response({})


@routes.get("/v1/pipelines/{name}/jobs/{job}/datums")
@endpoint(query=DATUM_PAGE_QUERY)
async def list_datums(request: web.Request) -> web.Response:
    """The datums a job processed; paged when asked (?limit=&after=&all=&state=), with
    ``next``."""
    name = request.match_info["name"]
    paged = bool(DATUM_PAGE_PARAMETERS & set(request.query))
    limit = query_int(request, "limit", 1000, low=1, high=10000)
    async with acquire(_engine(request).pool) as conn:
        job = await store.find_job(conn, name, request.match_info["job"])
        if not paged:
            datums = await store.list_job_datums(conn, job.id)
            return web.json_response({"datums": [d.to_json() for d in datums]})
        page = await store.datums_page(
            conn,
            name,
            job.id,
            skipped=query_bool(request, "all"),
            after=request.query.get("after", ""),
            limit=limit,
            only_state=request.query.get("state", "").upper() or None,
        )
    cursor = page[-1].id if len(page) == limit else None
    return web.json_response({"datums": [d.to_json() for d in page], "next": cursor})


@routes.get("/v1/pipelines/{name}/jobs/{job}/datums/{datum}")
async def inspect_datum(request: web.Request) -> web.Response:
    """One datum of a job (a unique prefix of its id is enough)."""
    async with acquire(_engine(request).pool) as conn:
        job = await store.find_job(conn, request.match_info["name"], request.match_info["job"])
        datum = await store.get_job_datum(conn, job.id, request.match_info["datum"])
    return web.json_response(datum.to_json())


@routes.post("/v1/pipelines/{name}/jobs/{job}/datums/{datum}/restart")
@endpoint(
    body=json_body(
        {"pipeline": {"type": "object"}}, required=["pipeline"], max_bytes=PIPELINE_BODY_LIMIT
    )
)
async def restart_datum(request: web.Request) -> web.Response:
    """A new job over the latest inputs that runs the datum again."""
    info, _body = await _pipeline_body(request)
    job = await _engine(request).requests.restart_datum(
        info, request.match_info["job"], request.match_info["datum"]
    )
    return web.json_response({"job": job.to_json() if job else None})


@routes.get("/v1/pipelines/{name}/logs")
@endpoint(query=LOG_QUERY)
async def logs(request: web.Request) -> web.Response:
    """Log lines of a pipeline's datums (?job=&datum=&after=<id>&limit=)."""
    name = request.match_info["name"]
    job_id = request.query.get("job") or None
    async with acquire(_engine(request).pool) as conn:
        full_job = (await store.find_job(conn, name, job_id)).id if job_id else None
        lines = await store.read_logs(
            conn,
            name,
            full_job,
            request.query.get("datum") or None,
            query_int(request, "after", 0, low=0, high=1 << 62),
            query_int(request, "limit", 1000, low=1, high=100000),
        )
    return web.json_response({"logs": [line.to_json() for line in lines]})
