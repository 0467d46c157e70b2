"""How a command reaches the cluster: one ``PfsClient`` per invocation, run to completion."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from shared.api.pfs_client import PfsClient
from shared.platform.config import load_config

T = TypeVar("T")


def open_pfs() -> PfsClient:
    """A client for the PFS named by the configuration ($TUSK_PFS_URL, $TUSK_HOME/config.toml)."""
    config = load_config()
    return PfsClient(config.pfs_url, cluster_id=config.cluster_id)


def run_pfs(call: Callable[[PfsClient], Awaitable[T]]) -> T:
    """Run ``call(client)`` on a fresh event loop and close the client afterwards."""

    async def with_client() -> T:
        client = open_pfs()
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(with_client())


@contextlib.asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a streaming iterator even when the caller stops early (releases its connection)."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
