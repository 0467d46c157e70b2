"""``list datum --all`` for any job, on a real PostgreSQL: the datums a job skipped are
those current when it started that it neither ran nor removed, read a page at a time from
the scheduler's datum history (migration 0006)."""

from __future__ import annotations

import time

import asyncpg

from services.scheduler import store
from shared.platform.config import Config
from shared.platform.db import close_pool, create_pool

N = 20_000


async def _job(conn: asyncpg.Connection, trigger: str) -> str:
    job = await store.create_job(conn, "p", 1, trigger, [])
    assert job is not None
    return job.id


async def _ran(conn: asyncpg.Connection, job: str, ids: list[str], state: str = "SUCCESS") -> None:
    await store.insert_job_datums(conn, job, [store.PlannedDatum(d, f"h-{d}", []) for d in ids])
    await conn.execute("UPDATE pps_job_datums SET state = $2 WHERE job_id = $1", job, state)


async def _all(conn: asyncpg.Connection, job: str, page: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    after = ""
    while True:
        got = await store.datums_page(conn, "p", job, skipped=True, after=after, limit=page)
        out += [(d.id, d.state) for d in got]
        if len(got) < page:
            return out
        after = got[-1].id


async def test_skipped_datums_of_any_job(tusk_config: Config) -> None:
    pool = await create_pool(tusk_config)
    try:
        await store.migrate_scheduler(pool)
        ids = [f"d{n:06d}" for n in range(N)]
        async with pool.acquire() as conn:
            # first: runs every datum and succeeds.
            first = await _job(conn, "t1")
            await _ran(conn, first, ids)
            await store.commit_datum_outputs(
                conn,
                "p",
                first,
                replaced=ids,
                succeeded=[(d, "h", None) for d in ids],
                new_paths=[],
            )
            # second: runs two datums, removes one, then fails (nothing becomes current).
            second = await _job(conn, "t2")
            await _ran(conn, second, ids[:2], "FAILED")
            await store.update_job(conn, second, state="JOB_FAILURE", removed_datums=[ids[2]])
            # third: runs three datums (two changed, one new) and removes one; succeeds.
            third = await _job(conn, "t3")
            await _ran(conn, third, [ids[0], ids[5], "e-new"])
            await store.update_job(conn, third, removed_datums=[ids[9]])
            await store.commit_datum_outputs(
                conn,
                "p",
                third,
                replaced=[ids[0], ids[5], "e-new", ids[9]],
                succeeded=[(ids[0], "h2", None), (ids[5], "h2", None), ("e-new", "h", None)],
                new_paths=[],
            )
            fourth = await _job(conn, "t4")  # has run nothing yet

            started = time.perf_counter()
            second_all = await _all(conn, second, 1000)
            took = time.perf_counter() - started
            assert len(second_all) == N - 1  # all but the removed one
            assert second_all[:3] == [(ids[0], "FAILED"), (ids[1], "FAILED"), (ids[3], "SKIPPED")]
            assert [d for d, _ in second_all] == sorted(d for d, _ in second_all)

            third_all = dict(await _all(conn, third, 777))
            assert len(third_all) == N  # N - 1 removed + 1 new
            assert ids[9] not in third_all and third_all["e-new"] == "SUCCESS"
            assert third_all[ids[0]] == "SUCCESS" and third_all[ids[1]] == "SKIPPED"

            fourth_all = dict(await _all(conn, fourth, 5000))
            assert len(fourth_all) == N and set(fourth_all.values()) == {"SKIPPED"}
            assert "e-new" in fourth_all and ids[9] not in fourth_all
            # The first job ran everything: none skipped.
            assert {s for _, s in await _all(conn, first, 1000)} == {"SUCCESS"}
        print(f"{N} datums of a job, pages of 1000: {took:.2f} s")
    finally:
        await close_pool(pool)
