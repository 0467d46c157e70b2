"""A FUSE session: mount a tree, serve the kernel's requests in this asyncio loop, unmount.

Shared by mountd (the ``tusk`` tree of repos and commits) and the datum worker (the
``tusk-lazy`` tree of lazy inputs). pyfuse3 runs on trio by default; its asyncio mode
(``pyfuse3.asyncio.enable()``) runs the same request loop as asyncio tasks, so the
FUSE handlers share the caller's event loop and caches and need no thread bridge.
pyfuse3 holds one session per process, hence one mount point per process: each user
mounts one root and shows its contents as directories beneath it.

Whoever serves a tree must never touch it with blocking calls from the loop thread:
the kernel would wait for an answer that loop can no longer give. Use a thread
(``asyncio.to_thread``) or a subprocess.

Importing this module needs pyfuse3; callers that can run without FUSE import it lazily.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio

from shared.platform.errors import FailedPrecondition, Unavailable

log = logging.getLogger("tusk.fuse")

# Requests served at once: concurrent readers each hold a worker while they wait on I/O.
MAX_WORKERS = 64
# The file-system name and subtype mountd's tree shows in /proc/self/mountinfo.
DEFAULT_NAME = "tusk"


def fuse_unavailable_reason() -> str | None:
    """Why FUSE mounts cannot work here, or None if they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is not installed and we are not root"
    return None


def mount_options(
    *, allow_other: bool, name: str = DEFAULT_NAME, read_only: bool = False
) -> set[str]:
    """libfuse options: the tree shows as ``fuse.<name>``; the kernel checks modes.

    ``allow_other`` lets other users, and processes in other user namespaces (a
    bubblewrap sandbox), use the tree: without it FUSE refuses everyone but the
    mounting user of the mounting namespace.
    """
    options = {f"fsname={name}", f"subtype={name}", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    if read_only:
        options.add("ro")
    return options


def is_mounted(path: str | Path) -> bool:
    """Whether ``path`` is a mount point (per /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return False
    return False


def tusk_mount_points(name: str = DEFAULT_NAME) -> list[str]:
    """Every FUSE mount point of this machine's mount namespace mounted as ``name``."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if tail and tail[0] == f"fuse.{name}" and len(fields) > 4:
                found.append(_unescape(fields[4]))
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def force_unmount(path: str | Path, *, lazy: bool = True) -> bool:
    """Detach a FUSE mount (``fusermount3 -u [-z]``); True if it was mounted."""
    if not is_mounted(path):
        return False
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 and is_mounted(path):
        raise FailedPrecondition(f"cannot unmount {path}: {result.stderr.strip()}")
    return True


@asynccontextmanager
async def fuse_session(
    operations: pyfuse3.Operations,
    mountpoint: str | Path,
    *,
    name: str = DEFAULT_NAME,
    read_only: bool = False,
) -> AsyncIterator[asyncio.Task[None]]:
    """Mount ``operations`` at ``mountpoint`` and serve it until the block ends.

    Yields the serving task: it ends by itself if someone unmounts the tree from
    outside (``fusermount3 -u``), which foreground mounts wait for. ``name`` is the
    file-system type shown as ``fuse.<name>``; ``read_only`` mounts with ``ro``.
    """
    reason = fuse_unavailable_reason()
    if reason is not None:
        raise Unavailable(f"cannot mount at {mountpoint}: {reason}")
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        # A mount left by a process that died: nothing can serve it any more.
        log.warning("detaching stale mount at %s", mountpoint)
        force_unmount(mountpoint)
    pyfuse3.asyncio.enable()
    options = mount_options(allow_other=os.geteuid() == 0, name=name, read_only=read_only)
    try:
        pyfuse3.init(operations, str(mountpoint), options)
    except RuntimeError as exc:
        raise Unavailable(f"cannot mount at {mountpoint}: {exc}") from None
    serving = asyncio.create_task(pyfuse3.main(max_tasks=MAX_WORKERS), name=f"fuse-{name}")
    log.info("FUSE tree %s mounted at %s", name, mountpoint)
    try:
        yield serving
    finally:
        if not serving.done():
            pyfuse3.terminate()
        try:
            await serving
        except Exception:
            log.exception("the FUSE request loop failed")
        finally:
            # Unmounts too; lazily detached by libfuse if a process still uses the tree.
            pyfuse3.close(unmount=True)
            log.info("FUSE tree %s at %s unmounted", name, mountpoint)


__all__ = [
    "DEFAULT_NAME",
    "MAX_WORKERS",
    "force_unmount",
    "fuse_session",
    "fuse_unavailable_reason",
    "is_mounted",
    "mount_options",
    "tusk_mount_points",
]
