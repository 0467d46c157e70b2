"""Pipelines that name an image, run by real local workers: the image is pulled from a real
registry (docker-registry on 127.0.0.1), each datum runs in bubblewrap with the image's
root as /, and an image that cannot be had fails the pipeline's job within seconds with
one line naming the image and the registry's reason."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.scheduler.sandbox import Sandbox
from shared.images.store import ImageStore
from shared.platform.config import Config
from tests.fixtures.cluster import Cluster, running_cluster
from tests.fixtures.registry import (
    PrivateRegistry,
    Registry,
    TestImage,
    build_layer,
    busybox_layer,
    push_image,
)
from tests.fixtures.servers import free_port
from tests.test_pipelines import files, read, wait_for_jobs

# What only the image has, what its config says, and what its second layer deletes.
IMAGE = TestImage(
    layers=[
        busybox_layer(
            {
                "app/": None,
                "app/only-here.txt": b"from the image\n",
                "etc/": None,
                "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nworker:x:1234:2345:w:/home/w:/bin/sh\n",
                "etc/group": b"root:x:0:\nworkers:x:2345:\n",
                "gone": b"deleted by the next layer",
            }
        ),
        build_layer({".wh.gone": b"", "app/second-layer": b"2"}),
    ],
    env=["PATH=/bin", "GREETING=hello from the image"],
    working_dir="/app",
    user="worker",
    entrypoint=["/bin/false"],  # transform.cmd replaces it, as in Pachyderm
)

SCRIPT = (
    'out=/pfs/out/$(basename "$words"); '
    '{ cat only-here.txt; echo "$GREETING"; pwd; id -u; id -g; cat "$words"; '
    "test -e /gone && echo gone-is-there; test -e /usr/bin/python3 && echo host-usr; "
    "test -e /app/second-layer && echo second; } > $out"
)


@pytest.fixture
async def image_cluster(tusk_config: Config, tmp_path: Path) -> AsyncIterator[Cluster]:
    config = tusk_config.replace(local_images="pull", image_cache_dir=str(tmp_path / "images"))
    async with running_cluster(config, tmp_path) as cluster:
        yield cluster


def _spec(name: str, image: str, cmd: list[str] | None = None) -> dict[str, object]:
    return {
        "pipeline": {"name": name},
        "transform": {"image": image, "cmd": cmd or ["sh", "-c", SCRIPT]},
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
    }


async def test_datums_run_in_the_image_with_its_env_workdir_and_user(
    image_cluster: Cluster, registry_server: Registry
) -> None:
    cluster = image_cluster
    image = f"{registry_server.host}/tests/pipeline-app:v1"
    await push_image(registry_server.host, "tests/pipeline-app", "v1", IMAGE)
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"alpha\n", "/b": b"beta\n"}))
    await cluster.pps.create_pipeline(_spec("inimage", image))
    (job,) = await wait_for_jobs(cluster, "inimage", 1, timeout=60)
    assert job.state == "JOB_SUCCESS", job
    assert await read(cluster, "inimage", "/a") == (
        b"from the image\nhello from the image\n/app\n1234\n2345\nalpha\nsecond\n"
    )
    # One root per image in the cache, however many workers and datums used it.
    store = ImageStore(Path(cluster.config.image_cache_dir))
    [record] = store.records()
    assert image in record.references


async def test_transform_settings_override_the_images(
    image_cluster: Cluster, registry_server: Registry
) -> None:
    cluster = image_cluster
    image = f"{registry_server.host}/tests/pipeline-app:v2"
    await push_image(registry_server.host, "tests/pipeline-app", "v2", IMAGE)
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"x"}))
    spec = _spec(
        "overrides",
        image,
        ["sh", "-c", 'pwd > /pfs/out/a; id -u >> /pfs/out/a; echo "$GREETING" >> /pfs/out/a'],
    )
    spec["transform"] = {**spec["transform"], "working_dir": "/pfs", "user": "0",  # type: ignore[dict-item]
                         "env": {"GREETING": "from the spec"}}  # fmt: skip
    await cluster.pps.create_pipeline(spec)
    (job,) = await wait_for_jobs(cluster, "overrides", 1, timeout=60)
    assert job.state == "JOB_SUCCESS", job
    assert await read(cluster, "overrides", "/a") == b"/pfs\n0\nfrom the spec\n"


async def _wait_failed(cluster: Cluster, pipeline: str, timeout: float) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = await cluster.pps.list_jobs(pipeline)
        info = await cluster.pps.inspect_pipeline(pipeline)
        if jobs and jobs[0].state == "JOB_FAILURE" and info.state == "PIPELINE_CRASHING":
            return jobs[0].reason or "", info.reason or ""
        if time.monotonic() > deadline:
            raise AssertionError(f"not failed in {timeout} s: {jobs} {info}")
        await asyncio.sleep(0.1)


async def test_a_missing_tag_fails_the_job_within_seconds_naming_image_and_reason(
    image_cluster: Cluster, registry_server: Registry
) -> None:
    cluster = image_cluster
    await push_image(registry_server.host, "tests/pipeline-app", "v1", IMAGE)
    image = f"{registry_server.host}/tests/pipeline-app:no-such-tag"
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"x"}))
    started = time.monotonic()
    await cluster.pps.create_pipeline(_spec("notag", image))
    job_reason, pipeline_reason = await _wait_failed(cluster, "notag", 20)
    assert time.monotonic() - started < 15
    assert job_reason == pipeline_reason
    assert job_reason.startswith(f"image {image}: MANIFEST_UNKNOWN"), job_reason
    assert "\n" not in job_reason


async def test_an_unreachable_registry_fails_the_job_within_seconds(
    image_cluster: Cluster,
) -> None:
    cluster = image_cluster
    image = f"127.0.0.1:{free_port()}/nobody/home:v1"
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"x"}))
    await cluster.pps.create_pipeline(_spec("unreachable", image))
    job_reason, _ = await _wait_failed(cluster, "unreachable", 20)
    assert job_reason.startswith(f"image {image}: cannot reach the registry"), job_reason


async def test_local_images_host_runs_on_the_host_and_says_so_once(
    cluster: Cluster, registry_server: Registry, tmp_path: Path
) -> None:
    image = f"{registry_server.host}/tests/pipeline-app:v1"
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"x", "/b": b"y"}))
    await cluster.pps.create_pipeline(
        _spec(
            "onhost",
            image,
            ["sh", "-c", "test -x /usr/bin/python3 && touch /pfs/out/$(basename $words)"],
        )
    )
    (job,) = await wait_for_jobs(cluster, "onhost", 1, timeout=60)
    assert job.state == "JOB_SUCCESS", job
    log = (tmp_path / "logs" / "worker-onhost.log").read_text()
    assert log.count('local_images = "host": pipeline onhost runs on') == 1, log
    assert isinstance(Sandbox().default_working_dir, str)


async def test_a_private_registry_is_pulled_with_a_tusk_secret(
    image_cluster: Cluster, private_registry: PrivateRegistry
) -> None:
    cluster = image_cluster
    host = private_registry.host
    login = (private_registry.username, private_registry.password)
    await push_image(host, "tests/private", "v1", IMAGE, login=login)
    auth = base64.b64encode(":".join(login).encode()).decode()
    docker_config = json.dumps({"auths": {host: {"auth": auth}}})
    await cluster.pps.create_secret({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-login"},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": docker_config},
    })  # fmt: skip
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"alpha\n"}))
    without = _spec("nologin", f"{host}/tests/private:v1")
    await cluster.pps.create_pipeline(without)
    job_reason, _ = await _wait_failed(cluster, "nologin", 20)
    assert job_reason == (
        f"image {host}/tests/private:v1: the registry wants a login; none is configured for it"
    )
    with_login = _spec("withlogin", f"{host}/tests/private:v1")
    with_login["transform"] = {**with_login["transform"],  # type: ignore[dict-item]
                               "image_pull_secrets": ["registry-login"]}  # fmt: skip
    await cluster.pps.create_pipeline(with_login)
    (job,) = await wait_for_jobs(cluster, "withlogin", 1, timeout=60)
    assert job.state == "JOB_SUCCESS", job
    assert (await read(cluster, "withlogin", "/a")).startswith(b"from the image\n")
