"""What the scheduler references in the object store, for PFS's garbage collector.

Datum output trees (``pps_job_datums.output_root`` and the pipelines' current datums) are
index roots the collector must keep with everything under them; jobs not yet done may be
writing chunks and nodes no table names yet, so the answer also says when the oldest of
them was created: the collector spares everything written since (docs/lifecycle.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.api.pps_models import JOB_DONE
from shared.platform.db import Pool


async def references_page(pool: Pool, after: str, limit: int) -> dict[str, Any]:
    """One page of datum output roots after ``after`` (sorted), and the oldest job in flight."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT output_root AS root FROM pps_job_datums
            WHERE output_root IS NOT NULL AND output_root > $1
            UNION
            SELECT output_root FROM pps_current_datums
            WHERE output_root IS NOT NULL AND output_root > $1
            ORDER BY root LIMIT $2
            """,
            after,
            limit + 1,
        )
        oldest: datetime | None = await conn.fetchval(
            "SELECT min(created) FROM pps_jobs WHERE NOT (state = ANY($1::text[]))",
            list(JOB_DONE),
        )
    roots = [r["root"] for r in rows[:limit]]
    return {
        "roots": roots,
        "chunks": [],
        "oldest_in_flight": oldest.timestamp() if oldest is not None else None,
        "next": roots[-1] if len(rows) > limit else None,
    }
