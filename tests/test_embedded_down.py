"""``tusk down`` of a cluster with pipelines: it returns within a bound and leaves no worker.

Workers run in sessions of their own; a scheduler stopping them one pipeline at a time,
or a worker whose NATS drain takes 30 s, once let them outlive ``tusk down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scheduler.sandbox import bwrap_available
from tests.fixtures.servers import server_scratch_dir
from tests.test_cli import TUSK

PIPELINES = 4
PARALLELISM = 2
# A datum that runs until it is stopped, under a name no other test process uses (the
# pid in its fraction): the sweep below kills by this name, and other runs of the suite
# may share the machine.
SLEEP = f"sleep 3141.{os.getpid()}"
# Scheduler (one shared grace for all workers) plus the services, NATS and PostgreSQL.
DOWN_BOUND_S = 30.0


def with_home(home: Path) -> list[int]:
    """Pids of the processes whose environment names ``home`` as $TUSK_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"TUSK_HOME={home}\0".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def workers_of(home: Path) -> list[int]:
    return [pid for pid in with_home(home) if "services.scheduler.worker" in cmdline(pid)]


def sleeping_datums() -> list[int]:
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and cmdline(int(e.name)) == SLEEP + " "
    ]


@pytest.fixture
def cluster() -> Iterator[tuple[Path, dict[str, str]]]:
    reason = bwrap_available()
    assert reason is None, f"pipelines need bubblewrap: {reason}"
    scratch = server_scratch_dir("tusk-down-")
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env["TUSK_HOME"] = str(home)
    home.mkdir(mode=0o700, parents=True)
    (home / "config.toml").write_text('local_images = "host"\n')
    try:
        up = subprocess.run(
            [str(TUSK), "up", "--detach", "--any-ports"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, f"tusk up failed: {up.stderr}"
        yield home, env
    finally:
        subprocess.run([str(TUSK), "down"], env=env, capture_output=True, timeout=120)
        for pid in with_home(home) + sleeping_datums():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def tusk(env: dict[str, str], cwd: Path, *args: str) -> None:
    done = subprocess.run(
        [str(TUSK), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"tusk {' '.join(args)}: {done.stderr}"


def test_down_stops_every_worker_of_many_pipelines_promptly(
    cluster: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    home, env = cluster
    (tmp_path / "data").write_text("x\n")
    tusk(env, tmp_path, "create", "repo", "data")
    tusk(env, tmp_path, "put", "file", "data@master:/a", "-f", str(tmp_path / "data"))
    for n in range(PIPELINES):
        spec = {
            "pipeline": {"name": f"busy{n}"},
            "input": {"pfs": {"repo": "data", "glob": "/*"}},
            "transform": {"cmd": ["sh", "-c", SLEEP]},
            "parallelismSpec": {"constant": PARALLELISM},
        }
        path = tmp_path / f"busy{n}.json"
        path.write_text(json.dumps(spec))
        tusk(env, tmp_path, "create", "pipeline", "-f", str(path))

    deadline = time.monotonic() + 90
    while len(workers_of(home)) < PIPELINES * PARALLELISM or not sleeping_datums():
        assert time.monotonic() < deadline, (
            f"workers {workers_of(home)}, datums running {sleeping_datums()} after 90 s"
        )
        time.sleep(0.2)

    started = time.monotonic()
    down = subprocess.run([str(TUSK), "down"], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    left = {pid: cmdline(pid) for pid in with_home(home) + sleeping_datums()}
    assert left == {}, f"processes left running after tusk down: {left}"
    assert took < DOWN_BOUND_S, f"tusk down took {took:.1f} s"
    print(f"tusk down took {took:.1f} s")
