"""How a command reaches the cluster: one ``PfsClient`` per invocation, run to completion."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from shared.platform.errors import Unavailable

if TYPE_CHECKING:
    from shared.api.pfs_client import PfsClient
    from tusk.contexts import Endpoints

T = TypeVar("T")


def open_pfs(endpoints: Endpoints | None = None) -> PfsClient:
    """A client for the PFS of the environment, the active context, or config.toml."""
    # Imported on first use: the modules of commands that never call PFS import this one
    # too, and aiohttp alone costs 0.1-0.4 s of start-up.
    from shared.api.pfs_client import PfsClient
    from tusk.contexts import resolve_endpoints

    endpoints = endpoints or resolve_endpoints()
    return PfsClient(endpoints.pfs_url, cluster_id=endpoints.cluster_id)


def run_pfs(call: Callable[[PfsClient], Awaitable[T]]) -> T:
    """Run ``call(client)`` on a fresh event loop and close the client afterwards."""
    import asyncio  # ~50 ms to import: not for commands that never reach here

    from tusk.contexts import resolve_endpoints  # config.toml, contexts: only to call out

    endpoints = resolve_endpoints()

    async def with_client() -> T:
        client = open_pfs(endpoints)
        try:
            return await call(client)
        finally:
            await client.close()

    with naming_context(endpoints, endpoints.pfs_url):
        return asyncio.run(with_client())


@contextlib.contextmanager
def naming_context(endpoints: Endpoints, url: str) -> Iterator[None]:
    """An unreachable or foreign cluster's error names the context and URL it came from."""
    try:
        yield
    except Unavailable as exc:
        if not endpoints.context:
            raise
        raise Unavailable(f"{endpoints.describe(url)}: {exc.message}") from None


@contextlib.asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a streaming iterator even when the caller stops early (releases its connection)."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
