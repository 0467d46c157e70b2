"""A pipeline's task queue, published to by its starting jobs and forgotten when the
pipeline is deleted — one at a time, per pipeline name.

The worker reconciler forgets a deleted pipeline's queue (purges its task subject, deletes
its workers' consumer) a while after it saw the pipeline gone. A pipeline recreated under
the same name meanwhile may already have a job that published its tasks: a purge then
would leave that job in JOB_RUNNING forever, waiting on tasks nobody will run. So the
purge happens only while the name is still absent from the pipeline table, checked under
the same per-name lock a job holds while it publishes: either the purge comes first (the
new job's tasks follow it), or the row is back and nothing is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from services.scheduler import store
from services.scheduler.consumers import forget_tasks
from services.scheduler.tasks import worker_consumer_name
from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import Pool, acquire
from shared.platform.errors import NotFound

log = logging.getLogger("tusk.scheduler")


class TaskQueues:
    def __init__(self, config: Config, pool: Pool, bus: Bus) -> None:
        self.config = config
        self.pool = pool
        self.bus = bus
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def publishing(self, pipeline: str) -> asyncio.Lock:
        """Held while a job of ``pipeline`` publishes its tasks."""
        return self._locks[pipeline]

    async def forget_if_gone(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s queued tasks and consumer unless a pipeline of that name
        exists again; True if forgotten."""
        async with self._locks[pipeline]:
            async with acquire(self.pool) as conn:
                try:
                    await store.get_pipeline(conn, pipeline)
                except NotFound:
                    pass
                else:
                    log.info("pipeline %s was recreated: its task queue stays", pipeline)
                    return False
            await forget_tasks(self.bus, self.config, pipeline, worker_consumer_name(pipeline))
            return True
