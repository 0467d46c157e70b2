"""A job's datums by state, a page at a time (the console's failed-first list and state
filters), on a real PostgreSQL with 100,000 datums: a page never reads the job whole."""

from __future__ import annotations

from services.scheduler import store
from shared.platform.config import Config
from shared.platform.db import Conn, close_pool, create_pool

N = 100_000
FAILED_EVERY = 1000


async def _pages(conn: Conn, job: str, state: str | None, page: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after = ""
    while True:
        got = await store.datums_page(
            conn, "p", job, skipped=False, after=after, limit=page, only_state=state
        )
        assert all(d.state == state for d in got) if state else True
        pages.append([d.id for d in got])
        if len(got) < page:
            return pages
        after = got[-1].id


async def test_datums_of_one_state_come_a_page_at_a_time(tusk_config: Config) -> None:
    pool = await create_pool(tusk_config)
    try:
        await store.migrate_scheduler(pool)
        ids = [f"d{n:06d}" for n in range(N)]
        failed = ids[::FAILED_EVERY]
        async with pool.acquire() as conn:
            job = await store.create_job(conn, "p", 1, "t", [])
            assert job is not None
            await store.insert_job_datums(
                conn, job.id, [store.PlannedDatum(d, f"h-{d}", []) for d in ids]
            )
            await conn.execute(
                "UPDATE pps_job_datums SET state = CASE WHEN datum_id = ANY($2::text[]) "
                "THEN 'FAILED' ELSE 'SUCCESS' END WHERE job_id = $1",
                job.id,
                failed,
            )
            first = await store.datums_page(
                conn, "p", job.id, skipped=False, after="", limit=20, only_state="FAILED"
            )
            assert [d.id for d in first] == failed[:20]
            pages = await _pages(conn, job.id, "FAILED", 40)
            assert [d for p in pages for d in p] == failed and len(pages) == 3
            # No filter: the first page of 100 by id, then the next from its cursor.
            page_1 = await store.datums_page(conn, "p", job.id, skipped=False, after="", limit=100)
            page_2 = await store.datums_page(
                conn, "p", job.id, skipped=False, after=page_1[-1].id, limit=100
            )
            assert [d.id for d in page_1 + page_2] == ids[:200]
            # Skipped datums are counted on the job, not listed: a filter on them finds none.
            assert not await store.datums_page(
                conn, "p", job.id, skipped=False, after="", limit=10, only_state="SKIPPED"
            )
    finally:
        await close_pool(pool)
