"""Images for local workers (issue #11): start-up cost and pull speed, each against a peer
measured in the same run.

Run: ``.venv/bin/python -m bench.bench_images [--mib 100] [--runs 30]``

1. First datum's start-up: what a new worker does before its first datum's command ends,
   with a cached image (open the cache, read the image's config, build the image sandbox,
   run ``sh -c true`` in bubblewrap with the image's root as /) vs with no image (the host
   sandbox, same command). Median of ``--runs`` cold starts each, in fresh subprocesses so
   nothing is cached in-process. Goal: image ≤ 1.5× host.
2. Pull + unpack of a ``--mib`` MiB image (4 gzip'd layers of incompressible files) from
   Debian's docker-registry on 127.0.0.1 into an empty cache (``obtain_image``: manifest,
   config, layers with digests checked, root built) vs ``skopeo copy`` of the same image
   to a ``dir:`` (download and digest checks only, no unpacking). Goal: our speed ≥ 0.5×
   skopeo's.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import aiohttp

from shared.images.pull import obtain_image
from shared.images.store import ImageStore
from tests.fixtures.registry import TestImage, busybox_layer, push_image
from tests.fixtures.servers import free_port, wait_for_port

_STARTUP = """
import asyncio, sys, time
from pathlib import Path
started = time.perf_counter()
from services.scheduler.sandbox import Sandbox
if sys.argv[1] == "image":
    from services.scheduler.image_sandbox import ImageSandbox
    from shared.images.store import ImageStore
    sandbox = ImageSandbox(ImageStore(Path(sys.argv[2])).image(sys.argv[3]))
else:
    sandbox = Sandbox()
from services.scheduler.sandbox import SandboxSettings
argv = sandbox.argv(["sh", "-c", "true"], inputs={}, out=None,
                    settings=SandboxSettings(working_dir=sandbox.default_working_dir,
                                             user=sandbox.identity(None)))
run = asyncio.run(sandbox.run(argv, [], sandbox.environment({}), 30))
assert run.exit_code == 0, run
print(time.perf_counter() - started)
"""


def _big_layer(mib: int, seed: int) -> bytes:
    """A gzip'd layer of ``mib`` MiB of incompressible files (1 MiB each)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for number in range(mib):
            data = os.urandom(1 << 20)
            info = tarfile.TarInfo(f"data/{seed}/{number:04d}.bin")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)


def _start_registry(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = directory / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {directory / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, 10, process)
    return process, f"127.0.0.1:{port}"


def _startup(runs: int, kind: str, cache: Path, digest: str) -> float:
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _STARTUP, kind, str(cache), digest],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        times.append(float(done.stdout.strip()))
    return statistics.median(times)


async def _pull(host: str, cache: Path) -> tuple[str, float]:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        image = await obtain_image(ImageStore(cache), f"{host}/bench/big:v1", session)
    return image.record.digest, time.perf_counter() - started


def _skopeo(host: str, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
         f"docker://{host}/bench/big:v1", f"dir:{target}"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tusk-bench-images-"))
    process, host = _start_registry(scratch)
    try:
        per_layer = max(1, args.mib // 4)
        layers = [busybox_layer()] + [_big_layer(per_layer, seed) for seed in range(4)]
        image = TestImage(layers=layers, working_dir="/")
        asyncio.run(push_image(host, "bench/big", "v1", image))
        size = sum(len(layer) for layer in layers)
        pulls, skopeos = [], []
        for attempt in range(3):
            cache = scratch / f"cache-{attempt}"
            digest, seconds = asyncio.run(_pull(host, cache))
            pulls.append(seconds)
            skopeos.append(_skopeo(host, scratch / f"skopeo-{attempt}"))
            if attempt < 2:
                shutil.rmtree(cache)
        ours, theirs = statistics.median(pulls), statistics.median(skopeos)
        print(f"pull+unpack of {size / 2**20:.0f} MiB: tusk {ours:.2f} s "
              f"({size / 2**20 / ours:.0f} MiB/s), skopeo copy {theirs:.2f} s "
              f"({size / 2**20 / theirs:.0f} MiB/s): speed ratio {theirs / ours:.2f} (goal >= 0.5)")  # fmt: skip
        host_start = _startup(args.runs, "host", cache, digest)
        image_start = _startup(args.runs, "image", cache, digest)
        print(f"first datum start-up (median of {args.runs}): host {host_start * 1000:.0f} ms, "
              f"cached image {image_start * 1000:.0f} ms: ratio {image_start / host_start:.2f} "
              "(goal <= 1.5)")  # fmt: skip
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
