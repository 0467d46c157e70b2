"""The bubblewrap sandbox with an image's root as ``/``.

The root (``store.ImageStore``'s unpacked image) is bound read-only at ``/``; over it
come a fresh ``/proc``, a minimal ``/dev``, a private ``/tmp``, and ``/pfs`` (a tmpfs
holding the inputs read-only and ``/pfs/out`` writable, then made read-only itself).
Nothing of the host is shown: no ``/usr``, no host Python, the image's own ``/etc``.
Namespaces, session, no network and killing are the host sandbox's (``sandbox.py``).

What runs, as Kubernetes runs a Pachyderm pipeline's user container: ``transform.cmd``
replaces the image's entrypoint and cmd; the environment is the image's ``Env``, then
the transform's and Pachyderm's variables; the directory is ``transform.working_dir``,
else the image's ``WorkingDir``, else ``/``; the user is ``transform.user``, else the
image's ``User`` (names from the image's ``/etc/passwd``), else root — root of the
sandbox's user namespace, with no capabilities on the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from services.scheduler.sandbox import (
    DEFAULT_PATH,
    DEFAULT_SETTINGS,
    LOG_LIMIT,
    Sandbox,
    SandboxSettings,
)
from shared.images.layers import resolve_in_root
from shared.images.store import Image
from shared.images.users import home_of, resolve_user
from shared.platform.errors import FailedPrecondition


class ImageSandbox(Sandbox):
    """A ``Sandbox`` whose datums see ``image``'s root as ``/``."""

    def __init__(self, image: Image, *, bwrap: str | None = None, log_limit: int = LOG_LIMIT):
        super().__init__(bwrap=bwrap, host_dirs=(), log_limit=log_limit)
        self.image = image
        self._passwd = _read(image.root, "passwd")
        self._group = _read(image.root, "group")
        self.path = image.config.environment().get("PATH", DEFAULT_PATH)
        self.default_working_dir = image.config.working_dir or "/"

    def identity(self, user: str | None) -> tuple[int, int] | None:
        return resolve_user(user or self.image.config.user, self._passwd, self._group)

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        uid, _ = self.identity(None) or (0, 0)
        base = {"PATH": DEFAULT_PATH, "HOME": home_of(uid, self._passwd)}
        return {**base, **self.image.config.environment(), **extra}

    def argv(
        self,
        cmd: Sequence[str],
        *,
        inputs: Mapping[str, Path],
        out: Path | None,
        settings: SandboxSettings = DEFAULT_SETTINGS,
    ) -> list[str]:
        if self.bwrap is None:
            return super().argv(cmd, inputs=inputs, out=out, settings=settings)  # its error
        if not cmd:
            raise FailedPrecondition("the transform has no command to run")
        uid, gid = settings.user if settings.user is not None else (0, 0)
        args = [self.bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        args += [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind", str(self.image.root), "/",
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--perms", "0755", "--tmpfs", "/pfs",
        ]  # fmt: skip
        for name, source in inputs.items():
            args += ["--ro-bind", str(source), f"/pfs/{name}"]
        if out is not None:
            args += ["--bind", str(out), "/pfs/out"]
        for source, target in settings.mounts:
            args += ["--ro-bind", str(source), target]
        args += ["--remount-ro", "/pfs", "--chdir", settings.working_dir, "--", *cmd]
        return args


def _read(root: Path, name: str) -> str:
    """The image's /etc/``name``, resolved inside the root (an absolute symlink there
    must not read the host's file)."""
    try:
        path = resolve_in_root(root, PurePosixPath("etc")) / name
        return path.read_text(errors="replace") if path.is_file() and not path.is_symlink() else ""
    except OSError:
        return ""
