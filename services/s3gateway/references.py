"""What the S3 gateway references in the object store, for PFS's garbage collector.

Multipart uploads in progress hold their parts' bytes as chunks no commit names yet; the
gateway answers with those chunks, a page of uploads at a time, and with when its oldest
open upload started (a part being written has chunks stored before its record is: the
collector spares everything written since). ``/v1/references`` shadows no bucket: S3
bucket names are at least three characters long.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from services.s3gateway.api import UPLOADS
from services.s3gateway.uploads import PREFIX, Upload, Uploads
from shared.platform.errors import NotFound
from shared.platform.http import query_int


async def references_page(uploads: Uploads, after: str, limit: int) -> dict[str, Any]:
    """Chunks of the parts of up to ``limit`` open uploads whose ids sort after ``after``."""
    chunks: set[str] = set()
    oldest: datetime | None = None
    seen = 0
    last: str | None = None
    truncated = False
    async for key in uploads.store.list(PREFIX):
        if not key.endswith("/upload.json"):
            continue
        upload_id = key[len(PREFIX) :].split("/", 1)[0]
        try:
            record = json.loads(await uploads.store.get(key))
        except NotFound:
            continue  # completed or aborted meanwhile
        started = datetime.fromisoformat(record["started"])
        oldest = started if oldest is None else min(oldest, started)
        if upload_id <= after:
            continue
        if seen == limit:
            truncated = True
            continue  # keep reading records: the oldest upload may come later
        upload = Upload(upload_id, record["bucket"], record["key"], started)
        for part in await uploads.parts(upload):
            chunks.update(ref.chunk for ref in part.entry.chunks)
        seen += 1
        last = upload_id
    return {
        "roots": [],
        "chunks": sorted(chunks),
        "oldest_in_flight": oldest.timestamp() if oldest is not None else None,
        "next": last if truncated else None,
    }


async def references(request: web.Request) -> web.Response:
    """GET /v1/references?after=&limit=: the chunks open multipart uploads hold."""
    limit = query_int(request, "limit", 1000, low=1, high=10000)
    page = await references_page(request.app[UPLOADS], request.query.get("after", ""), limit)
    return web.json_response(page)
