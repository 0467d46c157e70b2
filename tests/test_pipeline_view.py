"""The scheduler's view of PPS's pipelines (services/scheduler/pipelines.py) on a real
PostgreSQL: answers from PPS arrive in any order, and the view keeps the newest; a full
pass forgets only what it saw before its listing began."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler import store
from services.scheduler.store import migrate_scheduler
from shared.api.pps_models import PIPELINE_PAUSED, PIPELINE_RUNNING, InputCommit, PipelineInfo
from shared.platform.config import Config
from shared.platform.db import Pool, close_pool, create_pool
from shared.platform.errors import NotFound

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def record(version: int, state: str, *, created: int = 0, updated: int = 0) -> PipelineInfo:
    """PPS's record of pipeline ``p``, made ``created`` and changed ``updated`` seconds after T0."""
    return PipelineInfo(
        name="p",
        version=version,
        state=state,
        spec={"pipeline": {"name": "p"}, "version_mark": version},
        created=(T0 + timedelta(seconds=created)).isoformat(),
        updated=(T0 + timedelta(seconds=updated)).isoformat(),
    )


@pytest.fixture
async def pool(tusk_config: Config) -> AsyncIterator[Pool]:
    pool = await create_pool(tusk_config)
    try:
        await migrate_scheduler(pool)
        yield pool
    finally:
        await close_pool(pool)


async def test_an_older_answer_never_overwrites_a_newer_one(pool: Pool) -> None:
    async with pool.acquire() as conn:
        assert await store.save_pipeline(conn, record(2, PIPELINE_PAUSED, updated=20))
        # Read before the pause, delivered after it: ignored.
        assert not await store.save_pipeline(conn, record(2, PIPELINE_RUNNING, updated=10))
        assert (await store.get_pipeline(conn, "p")).state == PIPELINE_PAUSED
        # The pipeline deleted and made again: version 1 again, but made later, so it wins.
        assert await store.save_pipeline(conn, record(1, PIPELINE_RUNNING, created=30, updated=30))
        info = await store.get_pipeline(conn, "p")
        assert (info.version, info.state) == (1, PIPELINE_RUNNING)
        assert await store.pipeline_spec_version(conn, "p", 1) == info.spec


async def test_a_pass_forgets_only_what_it_saw_before_its_listing(pool: Pool) -> None:
    async with pool.acquire() as conn:
        await store.save_pipeline(conn, record(1, PIPELINE_RUNNING))
        commit = InputCommit("in", "in", "master", "c" * 32)
        job = await store.create_job(conn, "p", 1, "create:1", [commit])
        assert job is not None
        listing_began = await store.clock(conn)
        # Recorded again after the listing began (PPS's direct word): it stays.
        await store.save_pipeline(conn, record(1, PIPELINE_RUNNING, updated=5))
        assert await store.pipelines_seen_before(conn, listing_began) == []
        assert not await store.forget_pipeline(conn, "p", seen_before=listing_began)
        assert (await store.find_job(conn, "p", job.id)).id == job.id
        # Seen before a later listing began and absent from it: forgotten, jobs with it.
        later = await store.clock(conn)
        assert await store.pipelines_seen_before(conn, later) == ["p"]
        assert await store.forget_pipeline(conn, "p", seen_before=later)
        with pytest.raises(NotFound):
            await store.get_pipeline(conn, "p")
        with pytest.raises(NotFound):
            await store.find_job(conn, "p", job.id)
        assert await store.pipeline_spec_version(conn, "p", 1) is None
