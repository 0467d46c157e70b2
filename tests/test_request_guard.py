"""What every service refuses before a handler runs, and long polls whose client left.

Real PFS and PPS apps (real PostgreSQL, NATS, object store) spoken to over raw HTTP, as a
browser page, a DNS-rebinding attacker or a careless client would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.pps.app import build_app as build_pps
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.platform.config import CLUSTER_HEADER, Config
from shared.platform.errors import Unavailable
from tests.fixtures.apps import serve, stop
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port

SPEC = {
    "pipeline": {"name": "copy"},
    "transform": {"cmd": ["sh", "-c", "cp -r /pfs/images/* /pfs/out/"]},
    "input": {"pfs": {"repo": "images", "glob": "/*"}},
}


@pytest.fixture
async def pps_url(pfs: RunningPfs) -> AsyncIterator[str]:
    """A real PPS in front of the test's PFS."""
    port = free_port()
    # No scheduler here: PPS's calls to it fail fast (its pipeline events would tell it).
    config = pfs.config.replace(listen_port=port, scheduler_url=f"http://127.0.0.1:{free_port()}")
    runner = await serve(build_pps(config), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop(runner)


async def call(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=headers or {}) as resp,
    ):
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else {}


# --- content types ----------------------------------------------------------------------------


async def test_a_cross_site_text_plain_post_cannot_create_a_pipeline(
    pfs_client: PfsClient, pps_url: str
) -> None:
    # A page on any site may POST text/plain without asking (no CORS preflight).
    await pfs_client.create_repo("images")
    status, body = await call(
        "POST",
        f"{pps_url}/v1/pipelines",
        data=json.dumps(SPEC).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415, body
    assert body["error"]["code"] == "unsupported_media_type"
    assert "application/json" in body["error"]["message"]
    async with PpsClient(pps_url) as pps:
        assert await pps.list_pipelines() == []
        # The declared types still work: YAML text, and the SDK's JSON.
        status, body = await call(
            "POST",
            f"{pps_url}/v1/pipelines",
            data=json.dumps(SPEC).encode(),
            headers={"Content-Type": "application/yaml"},
        )
        assert status == 201, body
        assert [p.name for p in await pps.list_pipelines()] == ["copy"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_json_endpoints_take_only_json(
    pfs: RunningPfs, pfs_client: PfsClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    # aiohttp would add application/octet-stream to a bare body; skip_auto_headers keeps none.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{pfs.url}/v1/repos",
            data=b'{"name": "x"}',
            headers=headers,
            skip_auto_headers=["Content-Type"],
        ) as resp,
    ):
        assert resp.status == 415
    assert await pfs_client.list_repos() == []


async def test_an_endpoint_that_takes_no_body_refuses_one(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    await pfs_client.create_repo("data")
    commit = await pfs_client.start_commit("data", "master")
    status, _ = await call(
        "POST",
        f"{pfs.url}/v1/repos/data/commits/{commit.id}/squash",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 415


# --- Origin and Host --------------------------------------------------------------------------


@pytest.fixture
async def guarded_pfs(tusk_config: Config) -> AsyncIterator[str]:
    """A PFS configured as on Kubernetes: its service names and one console origin allowed."""
    from services.pfs.app import build_app

    port = free_port()
    config = tusk_config.replace(
        allowed_hosts=("pfs", ".tusk.svc.cluster.local"),
        allowed_origins=("http://console.example:8080",),
    )
    runner = await serve(build_app(config), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop(runner)


async def test_writes_from_a_foreign_origin_are_refused(guarded_pfs: str) -> None:
    url = f"{guarded_pfs}/v1/repos"
    repo = b'{"name": "%s"}'
    json_type = {"Content-Type": "application/json"}
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"):
        status, body = await call(
            "POST", url, data=repo % b"evil", headers={**json_type, "Origin": origin}
        )
        assert status == 403, origin
        assert body["error"]["code"] == "permission_denied"
    status, _ = await call("DELETE", f"{url}/any", headers={"Origin": "http://evil.example"})
    assert status == 403
    # No Origin but the browser says the request is cross-site.
    status, _ = await call(
        "POST", url, data=repo % b"evil", headers={**json_type, "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    # The service's own origin, and the configured console, may write.
    own = guarded_pfs
    for origin, name in ((own, b"own"), ("http://console.example:8080", b"console")):
        status, body = await call(
            "POST", url, data=repo % name, headers={**json_type, "Origin": origin}
        )
        assert status == 201, body
    # Reads from anywhere are answered (a browser shows them to no other origin: no CORS).
    status, body = await call("GET", url, headers={"Origin": "http://evil.example"})
    assert status == 200
    assert sorted(r["name"] for r in body["repos"]) == ["console", "own"]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_an_unexpected_host_is_refused_for_every_method(
    guarded_pfs: str, method: str
) -> None:
    # DNS rebinding: evil.example now resolves to 127.0.0.1, and the browser says so.
    status, body = await call(method, f"{guarded_pfs}/v1/repos", headers={"Host": "evil.example"})
    assert status == 421
    assert body["error"]["code"] == "misdirected_request"
    assert "allowed_hosts" in body["error"]["message"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:7651",
        "localhost:7651",
        "LOCALHOST",
        "[::1]:7651",
        "10.1.2.3",
        "pfs:7651",
        "pfs.tusk.svc.cluster.local:7651",
        "pfs.tusk.svc.cluster.local.",
    ],
)
async def test_ip_literals_localhost_and_configured_names_are_answered(
    guarded_pfs: str, host: str
) -> None:
    status, _ = await call("GET", f"{guarded_pfs}/v1/repos", headers={"Host": host})
    assert status == 200


async def test_kubernetes_service_names_need_configuration(pfs: RunningPfs) -> None:
    status, _ = await call("GET", f"{pfs.url}/healthz", headers={"Host": "pfs:7651"})
    assert status == 421


# --- sizes and depth --------------------------------------------------------------------------


async def test_a_20_mb_description_is_refused_and_creates_nothing(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    body = json.dumps({"name": "big", "description": "x" * 20_000_000}).encode()
    status, reply = await call(
        "POST", f"{pfs.url}/v1/repos", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 413
    assert "1 MiB" in reply["error"]["message"]

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the limit holds while reading.
        yield b'{"name": "big", "description": "'
        for _ in range(40):
            yield b"x" * 500_000
        yield b'"}'

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{pfs.url}/v1/repos", data=chunked(), headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        assert resp.status == 413
    # Under the body limit, a text field still has its own: 64 KiB.
    with pytest.raises(Exception, match="description: 100000 characters is more than the 65536"):
        await pfs_client.create_repo("big", "x" * 100_000)
    assert await pfs_client.list_repos() == []
    assert (await pfs_client.create_repo("fine", "x" * 65536)).description == "x" * 65536


@pytest.mark.parametrize("depth", [65, 100_000])
async def test_deeply_nested_json_is_a_400(pfs: RunningPfs, depth: int) -> None:
    nested = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    status, body = await call(
        "POST", f"{pfs.url}/v1/repos", data=nested, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert "nested" in body["error"]["message"]


async def test_deeply_nested_yaml_is_a_400(pfs: RunningPfs, pps_url: str) -> None:
    status, body = await call(
        "POST",
        f"{pps_url}/v1/pipelines",
        data=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 400, body


# --- long polls -------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "-1", "1e400", "soon"])
async def test_wait_timeouts_must_be_finite_seconds(
    pfs: RunningPfs, pfs_client: PfsClient, pps_url: str, timeout: str
) -> None:
    await pfs_client.create_repo("data")
    commit = await pfs_client.start_commit("data", "master")
    for url in (
        f"{pfs.url}/v1/repos/data/commits/{commit.id}/wait",
        f"{pps_url}/v1/pipelines/p/jobs/j/wait",
    ):
        status, body = await call("GET", f"{url}?timeout={timeout}")
        assert status == 400, (url, body)
        assert "timeout" in body["error"]["message"]


def tasks_in(function: str) -> list[asyncio.Task[Any]]:
    """Tasks of this loop whose chain of awaits passes through ``function``."""
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None:
            code = getattr(coro, "cr_code", None) or getattr(coro, "ag_code", None)
            if code is not None and code.co_name == function:
                found.append(task)
                break
            coro = getattr(coro, "cr_await", None)
    return found


async def test_an_abandoned_wait_stops_polling(pfs: RunningPfs, pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    commit = await pfs_client.start_commit("data", "master")
    waiting = asyncio.create_task(call("GET", f"{pfs.url}/v1/repos/data/commits/{commit.id}/wait"))
    for _ in range(100):
        if tasks_in("wait_commit"):
            break
        await asyncio.sleep(0.02)
    assert tasks_in("wait_commit"), "the wait never started"
    # The client gives up (Ctrl-C, a timeout): the server must stop querying for it.
    waiting.cancel()
    for _ in range(100):
        if not tasks_in("wait_commit"):
            break
        await asyncio.sleep(0.05)
    assert tasks_in("wait_commit") == []
    # The service is none the worse.
    finished = await pfs_client.finish_commit("data", commit.id)
    assert (await pfs_client.wait_commit("data", commit.id, timeout=5)).id == finished.id


# --- cluster identity -------------------------------------------------------------------------


async def test_a_client_refuses_a_service_of_another_cluster(tusk_config: Config) -> None:
    from services.pfs.app import build_app

    port = free_port()
    runner = await serve(build_app(tusk_config.replace(cluster_id="cluster-b")), port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            assert resp.headers[CLUSTER_HEADER] == "cluster-b"
            assert (await resp.json())["cluster"] == "cluster-b"
        async with PfsClient(url, cluster_id="cluster-b") as mine:
            await mine.create_repo("data")
        async with PfsClient(url, cluster_id="cluster-a") as other:
            with pytest.raises(Unavailable) as caught:
                await other.list_repos()
            assert caught.value.message == (
                f"the service at 127.0.0.1:{port} belongs to another Tusk cluster; run `tusk up`"
            )
            with pytest.raises(Unavailable, match="another Tusk cluster"):
                await anext(other.get_file("data", "master", "/x"))
    finally:
        await stop(runner)


async def test_text_postgresql_cannot_hold_is_a_400(pfs: RunningPfs, pps_url: str) -> None:
    # Found by tests/test_api_fuzz.py: both reached PostgreSQL and came back as 500.
    json_type = {"Content-Type": "application/json"}
    for text in (b'"a\\u0000b"', b'"\\ud921"'):
        status, body = await call(
            "POST",
            f"{pfs.url}/v1/repos",
            data=b'{"name": "x", "description": %s}' % text,
            headers=json_type,
        )
        assert status == 400, body
        assert "NUL or unpaired surrogates" in body["error"]["message"]
    for url in (f"{pps_url}/v1/jobs?pipeline=a%00b", f"{pfs.url}/v1/repos/x/commits?branch=%00"):
        status, body = await call("GET", url)
        assert status == 400, (url, body)
