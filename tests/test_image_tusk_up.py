"""The acceptance test of issue #11: a Pachyderm spec whose command needs what only its
image has runs through ``tusk up`` with no container engine (the image pulled from a real
registry on 127.0.0.1), and an image that cannot be had is one clear line on the pipeline
and its job. Everything through the ``tusk`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.scheduler.sandbox import bwrap_available
from tests.fixtures.registry import Registry, push_image
from tests.fixtures.servers import server_scratch_dir
from tests.test_cli import TUSK, Tusk
from tests.test_image_pipelines import IMAGE
from tests.test_pachyderm_examples import processes_of


@pytest.fixture(scope="module")
def up_env() -> Iterator[dict[str, str]]:
    """``tusk up --detach`` in a private $TUSK_HOME with the default config (images pulled)."""
    reason = bwrap_available()
    if reason is not None:
        pytest.fail(f"pipelines need bubblewrap: {reason}")
    scratch = server_scratch_dir("tusk-images-up-")
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env["TUSK_HOME"] = str(home)
    try:
        up = subprocess.run(
            [str(TUSK), "up", "--detach", "--any-ports"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, f"tusk up failed: {up.stderr}"
        yield env
    finally:
        down = subprocess.run(
            [str(TUSK), "down"], env=env, capture_output=True, text=True, timeout=120
        )
        left = processes_of(home)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    assert down.returncode == 0, f"tusk down failed: {down.stderr}"
    assert left == {}, f"processes left running after tusk down: {left}"


async def _job(tusk: Tusk, pipeline: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = (await tusk.ok("list", "job", "-p", pipeline, "-o", "json")).json()
        if jobs and jobs[0]["state"] in ("JOB_SUCCESS", "JOB_FAILURE", "JOB_KILLED"):
            return dict(jobs[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished job of {pipeline} in {timeout} s: {jobs}")
        await asyncio.sleep(0.2)


def _spec(tmp_path: Path, name: str, image: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "pipeline": {"name": name},
        "description": "needs what only its image has: busybox and /app/only-here.txt",
        "transform": {
            "image": image,
            "cmd": ["sh"],
            "stdin": ['cat only-here.txt "/pfs/words/$(basename $words)" > /pfs/out/result'],
        },
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
    }))  # fmt: skip
    return str(path)


async def test_a_spec_with_an_image_runs_through_tusk_up(
    up_env: dict[str, str], registry_server: Registry, tmp_path: Path
) -> None:
    tusk = Tusk(up_env, tmp_path)
    image = f"{registry_server.host}/tests/up-app:v1"
    await push_image(registry_server.host, "tests/up-app", "v1", IMAGE)
    (tmp_path / "w").write_text("from the repo\n")
    await tusk.ok("create", "repo", "words")
    await tusk.ok("put", "file", "words@master:/w", "-f", str(tmp_path / "w"))
    await tusk.ok("create", "pipeline", "-f", _spec(tmp_path, "inimage", image))
    job = await _job(tusk, "inimage")
    assert job["state"] == "JOB_SUCCESS", job
    result = await tusk.ok("get", "file", "inimage@master:/result")
    assert result.stdout == b"from the image\nfrom the repo\n"
    listed = (await tusk.ok("image", "list", "-o", "json")).json()
    assert any(image in row["references"] for row in listed)

    missing = f"{registry_server.host}/tests/up-app:no-such-tag"
    await tusk.ok("create", "pipeline", "-f", _spec(tmp_path, "notag", missing))
    job = await _job(tusk, "notag", timeout=20)
    assert job["state"] == "JOB_FAILURE"
    assert job["reason"].startswith(f"image {missing}: MANIFEST_UNKNOWN"), job
    pipeline = (await tusk.ok("inspect", "pipeline", "notag", "-o", "json")).json()
    assert pipeline["state"] == "PIPELINE_CRASHING"
    assert pipeline["reason"] == job["reason"]
