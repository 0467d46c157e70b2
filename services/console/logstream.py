"""A job's (or one datum's) log lines pushed to the page as they arrive: a server-sent-event
stream the page appends from, instead of re-reading the page on a timer.

PPS keeps log lines in order with an id each (``after=`` reads past one), but announces no
event when lines land (a datum's lines are recorded with its result). So while a page
follows, the console reads past its last line whenever a cluster event comes (a datum's
result moves the job) and at least every ``FOLLOW_S``; one small indexed read per follower,
never the page. The stream ends with ``end`` once the job is done and its lines are sent.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from services.console.live import KEEPALIVE_S, Changes, gone
from shared.api.pps_client import PpsClient
from shared.platform.errors import TuskError

FOLLOW_S = 1.0
BATCH = 500


def _line_event(line_id: int, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False)
    return f"id: {line_id}\nevent: line\ndata: {data}\n\n".encode()


async def log_stream(
    request: web.Request,
    pps: PpsClient,
    changes: Changes,
    pipeline: str,
    job_id: str,
    datum: str | None,
) -> web.StreamResponse:
    """``text/event-stream`` of ``line`` events (``{id, ts, datum, message}``) after the
    ``after`` query value or the browser's ``Last-Event-ID`` (a reconnect resumes), then
    ``end`` once the job is done."""
    job = await pps.inspect_job(pipeline, job_id)  # a 404 before the stream opens
    resume = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    cursor = int(resume) if resume.isdigit() else 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    quiet_since = time.monotonic()
    try:
        while not changes.stopping and not gone(request):
            seen = changes.version
            # The job's state first: lines recorded before it ended are all read below.
            done = (await pps.inspect_job(pipeline, job.id)).done
            lines = await pps.logs(pipeline, job=job.id, datum=datum, after=cursor, limit=BATCH)
            for line in lines:
                cursor = line.id
                await response.write(
                    _line_event(
                        line.id, {"ts": line.ts, "datum": line.datum_id, "message": line.message}
                    )
                )
            if lines:
                quiet_since = time.monotonic()
            if len(lines) == BATCH:
                continue
            if done:
                await response.write(b"event: end\ndata: done\n\n")
                break
            await changes.wait_past(seen, FOLLOW_S)
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                await response.write(b": keepalive\n\n")
    except ConnectionResetError:
        pass  # the page went away
    except TuskError as exc:
        # The stream is open: the error goes to the page as an event, not as a status.
        await response.write(f"event: failed\ndata: {json.dumps(exc.message)}\n\n".encode())
    return response
