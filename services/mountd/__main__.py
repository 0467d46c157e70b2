"""``python -m services.mountd``: serve the mount API, or mount in the foreground.

python -m services.mountd [serve] [--mount-root DIR]
python -m services.mountd mount DIR [REPO[@REF][+w] …]
python -m services.mountd unmount DIR | --all
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from services.mountd.app import build_app
from services.mountd.foreground import run_foreground_mount, unmount
from services.mountd.runtime import MountSettings
from shared.platform.config import load_config
from shared.platform.errors import TuskError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.mountd")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve the mount API (the default)")
    serve.add_argument("--mount-root", help="where mounts appear (default $TUSK_MOUNT_ROOT)")
    mount = commands.add_parser("mount", help="mount repos in the foreground until Ctrl-C")
    mount.add_argument("directory")
    mount.add_argument("specs", nargs="*", help="REPO[@REF][+w] (default: every repo's master)")
    umount = commands.add_parser("unmount", help="unmount a Tusk mount")
    umount.add_argument("directory", nargs="?")
    umount.add_argument("--all", action="store_true", dest="all_")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    config = load_config()
    try:
        if args.command == "mount":
            for commit in run_foreground_mount(config, args.directory, args.specs):
                print(f"committed {commit.repo}@{commit.id}")
            return 0
        if args.command == "unmount":
            for path in unmount(config, args.directory, all_=args.all_):
                print(f"unmounted {path}")
            return 0
        settings = MountSettings.from_config(config)
        if getattr(args, "mount_root", None):
            settings = settings.replace(mount_root=Path(args.mount_root))
        web.run_app(
            build_app(config, settings),
            host=config.listen_host,
            port=config.listen_port or 7654,
            print=None,
            access_log=None,
        )
        return 0
    except (TuskError, BaseExceptionGroup) as exc:
        error = _first_tusk_error(exc)
        if error is None:
            raise
        print(f"error: {error.message}", file=sys.stderr)
        return 1


def _first_tusk_error(exc: BaseException) -> TuskError | None:
    """The error to show: errors raised in the mount's task group arrive grouped."""
    if isinstance(exc, TuskError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_tusk_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
