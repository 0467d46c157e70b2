"""PPS HTTP API: pipelines, jobs, datums, logs and secrets (documented at /openapi.json).

Jobs, datums and logs are the scheduler's: PPS answers them by asking it (``PpsService``).
"""

from __future__ import annotations

from aiohttp import web

from services.pps.service import PpsService
from shared.api.jobs_endpoints import (
    DATUM_PAGE_PARAMETERS,
    DATUM_PAGE_QUERY,
    JOB_LIST_QUERY,
    LOG_QUERY,
)
from shared.api.secrets import check_secret_name, encode_values, parse_secret_manifest
from shared.pipeline.spec import load_spec_documents
from shared.platform.bus import Bus
from shared.platform.errors import InvalidArgument
from shared.platform.http import (
    SECONDS,
    YAML,
    Query,
    check_structure,
    endpoint,
    field,
    flag,
    json_body,
    query_bool,
    query_int,
    query_seconds,
    read_json,
    read_text,
    while_connected,
)

SERVICE: web.AppKey[PpsService] = web.AppKey("pps_service", PpsService)
BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
routes = web.RouteTableDef()


def _svc(request: web.Request) -> PpsService:
    return request.app[SERVICE]


async def _spec_body(request: web.Request) -> dict[str, object]:
    """A spec sent as JSON {spec: {...}} or as the raw JSON/YAML text of one pipeline."""
    if request.content_type == "application/json":
        body = await read_json(request)
        return field(body, "spec", dict)
    docs = load_spec_documents(await read_text(request))
    if len(docs) != 1:
        raise InvalidArgument(f"expected one pipeline spec in the body, got {len(docs)}")
    check_structure(docs[0])
    return docs[0]


@routes.post("/v1/pipelines")
@endpoint(
    # JSON {spec: {...}}, or the spec's own YAML (or JSON) text as application/yaml.
    body=json_body(
        {"spec": {"type": "object"}},
        required=["spec"],
        max_bytes=8 << 20,
        also={t: {"type": "object"} for t in YAML},
    ),
    query=[flag("update", "replace an existing pipeline"), flag("reprocess")],
    status=201,
)
async def create_pipeline(request: web.Request) -> web.Response:
    """Create a pipeline from a Pachyderm spec (?update=true replaces it; ?reprocess=true)."""
    info = await _svc(request).create_pipeline(
        await _spec_body(request),
        update=query_bool(request, "update"),
        reprocess=query_bool(request, "reprocess"),
    )
    return web.json_response(info.to_json(), status=201)


@routes.get("/v1/pipelines")
async def list_pipelines(request: web.Request) -> web.Response:
    """List pipelines."""
    infos = await _svc(request).list_pipelines()
    return web.json_response({"pipelines": [p.to_json() for p in infos]})


@routes.get("/v1/pipelines/{name}")
async def inspect_pipeline(request: web.Request) -> web.Response:
    """Inspect a pipeline: state, spec version, spec."""
    return web.json_response(
        (await _svc(request).inspect_pipeline(request.match_info["name"])).to_json()
    )


@routes.get("/v1/pipelines/{name}/history")
async def pipeline_history(request: web.Request) -> web.Response:
    """Every spec version of a pipeline."""
    return web.json_response(
        {"versions": await _svc(request).pipeline_history(request.match_info["name"])}
    )


@routes.post("/v1/pipelines/{name}/stop")
@endpoint()
async def stop_pipeline(request: web.Request) -> web.Response:
    """Pause a pipeline: no new jobs, workers stop."""
    return web.json_response(
        (await _svc(request).set_running(request.match_info["name"], False)).to_json()
    )


@routes.post("/v1/pipelines/{name}/start")
@endpoint()
async def start_pipeline(request: web.Request) -> web.Response:
    """Resume a paused pipeline (a job runs if its inputs moved meanwhile)."""
    return web.json_response(
        (await _svc(request).set_running(request.match_info["name"], True)).to_json()
    )


@routes.delete("/v1/pipelines/{name}")
@endpoint(query=[flag("keep_repo")])
async def delete_pipeline(request: web.Request) -> web.Response:
    """Delete a pipeline and its output repo (?keep_repo=true keeps the repo)."""
    await _svc(request).delete_pipeline(
        request.match_info["name"], keep_repo=query_bool(request, "keep_repo")
    )
    return web.json_response({})


@routes.get("/v1/jobs")
@endpoint(query=JOB_LIST_QUERY)
async def list_jobs(request: web.Request) -> web.Response:
    """List jobs, newest first (?pipeline=&limit=)."""
    jobs = await _svc(request).list_jobs(
        request.query.get("pipeline") or None, query_int(request, "limit", 100, low=1, high=10000)
    )
    return web.json_response({"jobs": [j.to_json() for j in jobs]})


@routes.get("/v1/pipelines/{name}/jobs/{job}")
async def inspect_job(request: web.Request) -> web.Response:
    """Inspect a job (a unique prefix of its id is enough)."""
    job = await _svc(request).inspect_job(request.match_info["name"], request.match_info["job"])
    return web.json_response(job.to_json())


@routes.get("/v1/pipelines/{name}/jobs/{job}/wait")
@endpoint(query=[Query("timeout", SECONDS)])
async def wait_job(request: web.Request) -> web.Response:
    """Block until the job is done (?timeout=seconds)."""
    timeout = query_seconds(request, "timeout")
    job = await while_connected(
        request,
        _svc(request).wait_job(
            request.match_info["name"], request.match_info["job"], timeout, request.app[BUS]
        ),
    )
    return web.json_response(job.to_json())


@routes.post("/v1/pipelines/{name}/jobs/{job}/stop")
async def stop_job(request: web.Request) -> web.Response:
    """Stop an unfinished job: it ends JOB_KILLED, its output commit finished with the error."""
    job = await _svc(request).stop_job(
        request.match_info["name"], request.match_info["job"], request.app[BUS]
    )
    return web.json_response(job.to_json())


@routes.delete("/v1/pipelines/{name}/jobs/{job}")
async def delete_job(request: web.Request) -> web.Response:
    """Delete a finished job and its datum records (not the pipeline's newest success)."""
    await _svc(request).delete_job(request.match_info["name"], request.match_info["job"])
    return web.json_response({})


@routes.get("/v1/pipelines/{name}/jobs/{job}/datums")
@endpoint(query=DATUM_PAGE_QUERY)
async def list_datums(request: web.Request) -> web.Response:
    """The datums a job processed (skipped ones are counted on the job).

    Paged when asked (?limit=&after=DATUM_ID, ?all=true adds the skipped datums, ?state=
    only those in a state): the answer then carries ``next``, the cursor of the following
    page (null at the end).
    """
    name, job = request.match_info["name"], request.match_info["job"]
    if not DATUM_PAGE_PARAMETERS & set(request.query):
        datums = await _svc(request).list_datums(name, job)
        return web.json_response({"datums": [d.to_json() for d in datums]})
    page, cursor = await _svc(request).datums_page(
        name,
        job,
        skipped=query_bool(request, "all"),
        after=request.query.get("after", ""),
        limit=query_int(request, "limit", 1000, low=1, high=10000),
        only_state=request.query.get("state") or None,
    )
    return web.json_response({"datums": [d.to_json() for d in page], "next": cursor})


@routes.get("/v1/pipelines/{name}/jobs/{job}/datums/{datum}")
async def inspect_datum(request: web.Request) -> web.Response:
    """Inspect one datum of a job (a unique prefix of its id is enough)."""
    datum = await _svc(request).inspect_datum(
        request.match_info["name"], request.match_info["job"], request.match_info["datum"]
    )
    return web.json_response(datum.to_json())


@routes.post("/v1/pipelines/{name}/jobs/{job}/datums/{datum}/restart")
@endpoint()
async def restart_datum(request: web.Request) -> web.Response:
    """Run a datum again in a new job over the latest inputs."""
    job = await _svc(request).restart_datum(
        request.match_info["name"], request.match_info["job"], request.match_info["datum"]
    )
    return web.json_response({"job": job.to_json() if job else None})


@routes.get("/v1/pipelines/{name}/logs")
@endpoint(query=LOG_QUERY)
async def logs(request: web.Request) -> web.Response:
    """Log lines of a pipeline's datums (?job=&datum=&after=<id>&limit=)."""
    lines = await _svc(request).logs(
        request.match_info["name"],
        request.query.get("job") or None,
        request.query.get("datum") or None,
        query_int(request, "after", 0, low=0, high=1 << 62),
        query_int(request, "limit", 1000, low=1, high=100000),
    )
    return web.json_response({"logs": [line.to_json() for line in lines]})


# Secrets: only names, keys and times leave PPS, except through the workers' endpoint.


def _secret_name(request: web.Request) -> str:
    return check_secret_name(request.match_info["secret"])


@routes.post("/v1/secrets")
@endpoint(
    body=json_body({"secret": {"type": "object"}}, required=["secret"]),
    query=[flag("update", "replace an existing secret")],
    status=201,
)
async def create_secret(request: web.Request) -> web.Response:
    """Store a secret from a Kubernetes Secret manifest {secret: {...}} (?update=true replaces)."""
    manifest = parse_secret_manifest(field(await read_json(request), "secret", dict))
    info = await _svc(request).secrets.create(manifest, update=query_bool(request, "update"))
    return web.json_response(info.to_json(), status=201)


@routes.get("/v1/secrets")
async def list_secrets(request: web.Request) -> web.Response:
    """List secrets: names, types, keys and times, never values."""
    infos = await _svc(request).secrets.list()
    return web.json_response({"secrets": [s.to_json() for s in infos]})


@routes.get("/v1/secrets/{secret}")
async def inspect_secret(request: web.Request) -> web.Response:
    """One secret's name, type, keys and times (never its values)."""
    return web.json_response((await _svc(request).secrets.inspect(_secret_name(request))).to_json())


@routes.delete("/v1/secrets/{secret}")
async def delete_secret(request: web.Request) -> web.Response:
    """Delete a secret that no pipeline uses."""
    await _svc(request).secrets.delete(_secret_name(request))
    return web.json_response({})


@routes.post("/v1/internal/pipelines/{name}/workers")
@endpoint(body=json_body({"problem": {"type": ["string", "null"]}}, required=["problem"]))
async def report_workers(request: web.Request) -> web.Response:
    """Internal, for the scheduler: what is wrong with a pipeline's workers (null: nothing)."""
    problem = (await read_json(request)).get("problem")
    if problem is not None and not isinstance(problem, str):
        raise InvalidArgument("problem must be a string or null")
    info = await _svc(request).report_workers(request.match_info["name"], problem)
    return web.json_response(info.to_json())


@routes.get("/v1/internal/secrets/{secret}/data")
async def secret_data(request: web.Request) -> web.Response:
    """Internal, for workers: the secret's values, base64. Keep PPS's port private."""
    name = _secret_name(request)
    values = await _svc(request).secrets.data(name)
    return web.json_response({"name": name, "data": encode_values(values)})
