"""Pod failures reach the pipeline: the real scheduler with its Kubernetes backend, against a
scripted Kubernetes API server (tests/k8s_api_double.py — a test double of the REST API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from services.pfs.app import build_app as build_pfs
from services.pps.app import build_app as build_pps
from services.scheduler.app import build_app as build_scheduler
from services.scheduler.backends.k8s_objects import K8sSettings
from services.scheduler.backends.kubernetes import KubernetesBackend
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.platform.config import Config
from tests.fixtures.apps import serve, stop
from tests.fixtures.servers import free_port
from tests.k8s_api_double import ScriptedKubernetesApi

NS = "tusk"


@pytest.fixture
async def k8s_cluster(
    tusk_config: Config,
) -> AsyncIterator[tuple[ScriptedKubernetesApi, PfsClient, PpsClient]]:
    double = ScriptedKubernetesApi()
    api_runner = web.AppRunner(double.app())
    await api_runner.setup()
    await web.TCPSite(api_runner, "127.0.0.1", 0).start()
    host = f"http://127.0.0.1:{api_runner.addresses[0][1]}"
    backend = KubernetesBackend(
        K8sSettings(namespace=NS, worker_image="registry.example/tusk:0.1.0"),
        configuration=client.Configuration(host=host),
    )
    ports = {name: free_port() for name in ("pfs", "pps", "scheduler")}
    config = tusk_config.replace(
        pfs_url=f"http://127.0.0.1:{ports['pfs']}",
        pps_url=f"http://127.0.0.1:{ports['pps']}",
        worker_backend="kubernetes",
    )
    runners = [
        await serve(build_pfs(config), ports["pfs"]),
        await serve(build_pps(config), ports["pps"]),
        await serve(build_scheduler(config, backend), ports["scheduler"]),
    ]
    try:
        async with PfsClient(config.pfs_url) as pfs, PpsClient(config.pps_url) as pps:
            yield double, pfs, pps
    finally:
        for runner in reversed(runners):
            await stop(runner)
        await api_runner.cleanup()


async def eventually(check: Any, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_image_pull_backoff_marks_the_pipeline_crashing_against_scripted_api_server(
    k8s_cluster: tuple[ScriptedKubernetesApi, PfsClient, PpsClient],
) -> None:
    double, pfs, pps = k8s_cluster
    await pfs.create_repo("images")
    spec = {
        "pipeline": {"name": "edges"},
        "transform": {"cmd": ["sh", "-c", "true"], "image": "alpine:3.20-typo"},
        "input": {"pfs": {"repo": "images", "glob": "/*"}},
    }
    await pps.create_pipeline(spec)

    async def deployment_made() -> bool:
        return any(name == "tusk-worker-edges" for (_, name) in double.deployments)

    await eventually(deployment_made)
    pods = double.make_pods(NS, "tusk-worker-edges")
    message = 'Back-off pulling image "alpine:3.20-typo"'
    double.set_container_state(
        NS,
        pods[0]["metadata"]["name"],
        "user",
        {"waiting": {"reason": "ImagePullBackOff", "message": message}},
    )

    async def crashing() -> Any:
        info = await pps.inspect_pipeline("edges")
        return info if info.state == "PIPELINE_CRASHING" else None

    info = await eventually(crashing)
    assert "ImagePullBackOff" in (info.reason or "") and pods[0]["metadata"]["name"] in (
        info.reason or ""
    )

    double.set_container_state(NS, pods[0]["metadata"]["name"], "user", {"running": {}})
    for entry in double.pods[(NS, pods[0]["metadata"]["name"])]["status"]["containerStatuses"]:
        entry["ready"] = True
    double.pods[(NS, pods[0]["metadata"]["name"])]["status"]["conditions"] = [
        {"type": "Ready", "status": "True"}
    ]

    async def running() -> bool:
        return (await pps.inspect_pipeline("edges")).state == "PIPELINE_RUNNING"

    await eventually(running)
