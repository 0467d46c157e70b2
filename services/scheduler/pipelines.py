"""The scheduler's view of PPS's pipelines, learnt from PPS and from nothing else.

PPS owns pipelines. The scheduler keeps what it needs of them in tables of its own
(``scheduler_pipelines``, ``scheduler_pipeline_specs``) and fills them from PPS's answers:

- PPS tells it at once about each change it makes (``PUT /v1/pipelines/{name}``, with
  PPS's record in the body), so a stopped pipeline starts no job from the next commit;
- a ``pipeline.updated`` event makes it ask PPS about that pipeline (the event is a
  reminder: the answer is whatever PPS holds then, so late or repeated events are safe);
- a full pass over PPS's listing at start and every ``SYNC_INTERVAL_S`` covers what both
  missed (PPS down for a moment, events lost), and forgets pipelines PPS no longer has.

An older answer never overwrites a newer one (``store.save_pipeline`` compares PPS's
``created`` and ``updated``), and a pass forgets only rows written before its listing
began, so a pipeline made meanwhile stays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.scheduler import store
from shared.api.pps_client import PpsClient
from shared.api.pps_models import PipelineInfo
from shared.platform.db import Pool, acquire
from shared.platform.errors import NotFound, TuskError

log = logging.getLogger("tusk.scheduler")

# How often the whole view is checked against PPS's listing (a safety net; changes
# arrive directly and by event).
SYNC_INTERVAL_S = 10.0


class PipelineView:
    def __init__(self, pool: Pool, pps: PpsClient) -> None:
        self.pool = pool
        self.pps = pps

    async def save(self, info: PipelineInfo) -> None:
        """Record PPS's word about a pipeline (sent by PPS itself)."""
        async with acquire(self.pool) as conn, conn.transaction():
            await store.save_pipeline(conn, info)

    async def refresh(self, name: str) -> PipelineInfo | None:
        """Ask PPS about one pipeline and record the answer; None if PPS has it no more
        (then it is forgotten here, unless it was recorded again meanwhile)."""
        async with acquire(self.pool) as conn:
            asked_at = await store.clock(conn)
        try:
            info = await self.pps.inspect_pipeline(name)
        except NotFound:
            async with acquire(self.pool) as conn:
                await store.forget_pipeline(conn, name, seen_before=asked_at)
            return None
        await self.save(info)
        return info

    async def sync(self) -> None:
        """Check every pipeline against PPS's listing."""
        async with acquire(self.pool) as conn:
            asked_at = await store.clock(conn)
        infos = await self.pps.list_pipelines()
        async with acquire(self.pool) as conn:
            async with conn.transaction():
                for info in infos:
                    await store.save_pipeline(conn, info)
            for name in await store.pipelines_seen_before(conn, asked_at):
                if await store.forget_pipeline(conn, name, seen_before=asked_at):
                    log.info("pipeline %s is gone from PPS: its jobs are forgotten", name)

    async def run(self) -> None:
        """The full pass, now and every ``SYNC_INTERVAL_S``."""
        while True:
            try:
                await self.sync()
            except TuskError as exc:
                log.warning("checking pipelines against PPS: %s", exc.message)
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def spec_version(self, name: str, version: int) -> dict[str, Any] | None:
        """A spec version of a pipeline; asked of PPS's history if this view never saw it
        (a job recorded before the view existed)."""
        async with acquire(self.pool) as conn:
            spec = await store.pipeline_spec_version(conn, name, version)
        if spec is not None:
            return spec
        try:
            history = await self.pps.pipeline_history(name)
        except NotFound:
            return None
        async with acquire(self.pool) as conn, conn.transaction():
            for entry in history:
                await store.save_spec_version(conn, name, int(entry["version"]), entry["spec"])
        return next((dict(e["spec"]) for e in history if e["version"] == version), None)

    async def report_workers(self, name: str, problem: str | None) -> None:
        """Tell PPS what is wrong with the pipeline's workers, and record its answer."""
        await self.save(await self.pps.report_workers(name, problem))
