"""``tusk mount DIR [REPO@REF[+w] …]`` and ``tusk unmount DIR|--all``, without the service.

A foreground mount runs the same FUSE tree as mountd in the calling process, with
``DIR`` as its root: each spec appears as ``DIR/<repo>``. Ctrl-C (or SIGTERM, or
``tusk unmount DIR``) finishes the open commits of rw mounts, then unmounts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from services.mountd.runtime import MountSettings, mount_tree
from services.mountd.session import force_unmount, is_mounted, tusk_mount_points
from shared.api.mount_client import MountClient, MountSpec
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitInfo
from shared.platform.config import Config
from shared.platform.errors import FailedPrecondition, NotFound

log = logging.getLogger("tusk.mountd")


async def _default_specs(config: Config) -> list[MountSpec]:
    """Pachyderm's default: every repo that has a master branch, read-only."""
    async with PfsClient(config.pfs_url, cluster_id=config.cluster_id) as client:
        return [
            MountSpec(repo.name) for repo in await client.list_repos() if "master" in repo.branches
        ]


async def serve_foreground_mount(
    config: Config,
    directory: str | Path,
    specs: Sequence[MountSpec | str],
    *,
    stop: asyncio.Event,
    settings: MountSettings | None = None,
) -> list[CommitInfo]:
    """Mount ``specs`` under ``directory`` until ``stop`` is set or the tree is unmounted.

    Returns the commits finished at unmount (rw mounts that were written to).
    """
    parsed = [MountSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if not parsed:
        parsed = await _default_specs(config)
    settings = (settings or MountSettings.from_config(config)).replace(mount_root=Path(directory))
    commits: list[CommitInfo] = []
    async with mount_tree(config, settings) as (manager, serving):
        for spec in parsed:
            await manager.mount(spec)
        log.info("mounted %d repo(s) under %s; Ctrl-C unmounts", len(parsed), directory)
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        for name in list(manager.mounts):
            commit = await manager.unmount(name, force=True)
            if commit is not None:
                commits.append(commit)
    return commits


def run_foreground_mount(
    config: Config, directory: str | Path, specs: Sequence[MountSpec | str]
) -> list[CommitInfo]:
    """Block serving a foreground mount; SIGINT/SIGTERM unmount cleanly (used by ``tusk mount``)."""

    async def main() -> list[CommitInfo]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            return await serve_foreground_mount(config, directory, specs, stop=stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return asyncio.run(main())


def unmount(config: Config, directory: str | Path | None, *, all_: bool = False) -> list[str]:
    """Unmount a Tusk mount (``tusk unmount DIR|--all``); returns what was unmounted.

    ``DIR`` may be a foreground mount's directory (its process then finishes its
    commits and exits) or ``<mountd root>/<name>`` (asked of mountd over HTTP).
    """
    if all_:
        points = tusk_mount_points()
        for point in points:
            force_unmount(point, lazy=False)
        return points
    if directory is None:
        raise FailedPrecondition("name a directory to unmount, or --all")
    path = Path(os.path.abspath(directory))
    if is_mounted(path):
        force_unmount(path, lazy=False)
        return [str(path)]
    if is_mounted(path.parent):

        async def ask_mountd() -> None:
            async with MountClient(config.mountd_url, cluster_id=config.cluster_id) as client:
                await client.unmount(path.name)

        asyncio.run(ask_mountd())
        return [str(path)]
    raise NotFound(f"{directory} is not a Tusk mount")


def default_mount_root(config: Config) -> str:
    """Where mountd mounts by default (``mount.root`` or ``$TUSK_HOME/mnt``)."""
    return os.fspath(MountSettings.from_config(config).mount_root)
