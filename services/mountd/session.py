"""mountd's FUSE session: the shared one (``shared/platform/fuse_session.py``), mounted as ``tusk``.

Kept as mountd's name for it, so mountd's modules and tests import from their own
service; the code lives in shared/ because the datum worker mounts its lazy inputs
with the same session.
"""

from __future__ import annotations

from shared.platform.fuse_session import (
    MAX_WORKERS,
    force_unmount,
    fuse_session,
    fuse_unavailable_reason,
    is_mounted,
    mount_options,
    tusk_mount_points,
)

__all__ = [
    "MAX_WORKERS",
    "force_unmount",
    "fuse_session",
    "fuse_unavailable_reason",
    "is_mounted",
    "mount_options",
    "tusk_mount_points",
]
