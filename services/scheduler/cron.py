"""Cron inputs: the scheduler commits a tick file to the cron's repo when one is due.

As in Pachyderm, each tick is a file named by its time (RFC 3339, UTC) in the
tick repo (``<pipeline>_<input name>`` by default); ``overwrite: true`` replaces
the previous tick, so the datum sees only the latest. The tick's commit then
triggers a job like any other input commit.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from services.scheduler import store
from services.scheduler.specs import SpecCache
from shared.api.pfs_client import PfsClient
from shared.api.pps_models import PIPELINE_ACTIVE
from shared.pipeline.durations import parse_cron_spec
from shared.pipeline.spec import CronInput, iter_inputs
from shared.platform.db import Pool, acquire
from shared.platform.errors import NotFound, TuskError
from shared.storage.chunking import EMPTY_FILE, FileEntry

log = logging.getLogger("tusk.scheduler")

MAX_CATCH_UP = 100_000
CRON_INTERVAL_S = 1.0


def tick_name(when: datetime) -> str:
    return "/" + when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_tick(path: str) -> datetime | None:
    try:
        return datetime.strptime(path.lstrip("/"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


async def last_tick(pfs: PfsClient, cron: CronInput) -> tuple[datetime | None, list[str]]:
    """The newest tick in the cron's repo, and every tick file there."""
    try:
        ticks = [f.path async for f in pfs.iter_files(cron.repo, cron.branch, "/")]
    except NotFound:
        return None, []
    times = [t for t in (parse_tick(p) for p in ticks) if t is not None]
    return (max(times) if times else None), ticks


async def tick_if_due(pfs: PfsClient, cron: CronInput, since: datetime, now: datetime) -> bool:
    """Commit the next tick of ``cron`` if it is due by ``now``; True if one was committed."""
    newest, existing = await last_tick(pfs, cron)
    base = newest or cron.start or since
    schedule = parse_cron_spec(cron.spec)
    due = schedule.next_after(base)
    if due > now:
        return False
    # After downtime, tick once for the latest due time rather than replaying every miss.
    for _ in range(MAX_CATCH_UP):
        following = schedule.next_after(due)
        if following > now:
            break
        due = following
    changes: list[tuple[str, FileEntry | None]] = []
    if cron.overwrite:
        changes.extend((path, None) for path in existing)
    changes.append((tick_name(due), EMPTY_FILE))
    await pfs.put_entries(cron.repo, cron.branch, changes, origin="cron")
    return True


class CronTicker:
    """Every second, commits the due ticks of the active pipelines' cron inputs."""

    def __init__(self, pool: Pool, pfs: PfsClient, specs: SpecCache) -> None:
        self.pool = pool
        self.pfs = pfs
        self.specs = specs

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CRON_INTERVAL_S)
            try:
                await self.tick()
            except TuskError as exc:
                log.warning("cron ticks: %s", exc.message)

    async def tick(self) -> None:
        async with acquire(self.pool) as conn:
            pipelines = await store.list_pipelines(conn)
        now = datetime.now(UTC)
        for pipeline in pipelines:
            if pipeline.state not in PIPELINE_ACTIVE:
                continue
            spec = self.specs.parse(pipeline.name, pipeline.version, pipeline.spec)
            created = datetime.fromisoformat(pipeline.created)
            for leaf in iter_inputs(spec.input):
                if isinstance(leaf, CronInput):
                    await tick_if_due(self.pfs, leaf, created, now)
