"""The query parameters of the job, datum and log endpoints, declared once: PPS serves
them to users and the scheduler (the jobs' owner) answers them, at the same paths
(``shared.api.jobs_api`` is their client)."""

from __future__ import annotations

from shared.platform.http import NAME, STRING, Query, flag, integer

JOB_LIST_QUERY = [Query("pipeline", NAME), Query("limit", integer(1, 10000))]

DATUM_PAGE_QUERY = [
    Query("limit", integer(1, 10000)),
    Query("after", STRING, "the cursor a previous page returned (a datum id)"),
    flag("all", "the skipped datums too"),
    Query("state", STRING, "only datums in this state (SUCCESS, FAILED, …); paged"),
]
# Any of these asks for a page (answered with ``next``); none, for the whole listing.
DATUM_PAGE_PARAMETERS = frozenset(q.name for q in DATUM_PAGE_QUERY)

LOG_QUERY = [
    Query("job", {"type": "string"}),
    Query("datum", {"type": "string"}),
    Query("after", integer(0, 1 << 62), "the id of the last line already read"),
    Query("limit", integer(1, 100000)),
]
