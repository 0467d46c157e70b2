"""mountd's settings and the running FUSE tree: PFS client, block cache, mounts, kernel session.

Settings come from the ``[mount]`` section of ``Config`` (``TUSK_MOUNT_*`` in the
environment). Both the HTTP service and the foreground ``tusk mount`` run the same
``mount_tree``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.mountd.cache import BlockCache
from services.mountd.files import DEFAULT_BLOCK_SIZE, BlockSource
from services.mountd.fs import TuskFs
from services.mountd.mounts import MountManager
from services.mountd.session import fuse_session
from shared.api.events import subject_filter
from shared.api.pfs_client import PfsClient
from shared.platform.bus import connect
from shared.platform.config import Config, tusk_home
from shared.platform.errors import InvalidArgument, Unavailable
from shared.storage.chunking import ChunkCache
from shared.storage.objstore import open_object_store

log = logging.getLogger("tusk.mountd")


@dataclass(frozen=True)
class MountSettings:
    """How mountd mounts: where, how often branch mounts refresh, how much it caches."""

    mount_root: Path
    scratch: Path
    refresh_interval: float = 30.0
    cache_bytes: int = 256 << 20
    block_size: int = DEFAULT_BLOCK_SIZE
    list_page: int = 1000

    @classmethod
    def from_config(cls, config: Config) -> MountSettings:
        """The ``[mount]`` section of ``config`` (``TUSK_MOUNT_ROOT`` … in the environment)."""
        mount = config.mount
        for name in ("refresh_s", "cache_mb", "block_kb", "list_page"):
            if getattr(mount, name) < 0:
                raise InvalidArgument(f"config mount.{name}: must not be negative")
        home = tusk_home()
        return cls(
            mount_root=Path(mount.root or home / "mnt"),
            scratch=Path(mount.scratch or home / "mountd-scratch"),
            refresh_interval=float(mount.refresh_s),
            cache_bytes=mount.cache_mb << 20,
            block_size=mount.block_kb << 10,
            list_page=mount.list_page,
        )

    def replace(self, **changes: Any) -> MountSettings:
        return replace(self, **changes)


@asynccontextmanager
async def mount_tree(
    config: Config, settings: MountSettings
) -> AsyncIterator[tuple[MountManager, asyncio.Task[None]]]:
    """Mount the FUSE tree at ``settings.mount_root``; at exit commit, unmount, close.

    Yields the manager and the kernel session's serving task (done once the tree is
    unmounted from outside).
    """
    settings.scratch.mkdir(parents=True, exist_ok=True)
    cache = BlockCache(settings.cache_bytes)
    async with (
        PfsClient(config.pfs_url, cluster_id=config.cluster_id) as client,
        open_object_store(config) as objects,
    ):
        source = BlockSource(
            client,
            cache,
            block_size=settings.block_size,
            objects=objects,
            chunks=ChunkCache(max_bytes=max(settings.cache_bytes // 2, 16 << 20)),
        )
        manager = MountManager(
            client,
            source,
            root=str(settings.mount_root),
            scratch=str(settings.scratch),
            refresh_interval=settings.refresh_interval,
            list_page=settings.list_page,
        )
        fs = TuskFs(manager, list_window=settings.list_page)
        try:
            async with (
                branch_moves(config) as moves,
                fuse_session(fs, settings.mount_root) as serving,
            ):
                manager.branch_moves = moves
                async with manager.running():
                    yield manager, serving
        finally:
            await source.aclose()
            await cache.aclose()


@asynccontextmanager
async def branch_moves(config: Config) -> AsyncIterator[asyncio.Event | None]:
    """An event set whenever PFS announces a branch move, or None where NATS cannot be
    reached (branch mounts are then refreshed on their timer alone)."""
    try:
        bus = await connect(config, name="tusk-mountd")
    except Unavailable as exc:
        log.warning("branch mounts refresh on a timer only: %s", exc.message)
        yield None
        return
    try:
        async with bus.watch(subject_filter(config.nats_prefix, "branch.moved")) as moved:
            yield moved
    finally:
        await bus.close()
