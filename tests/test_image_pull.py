"""Pulling images from a real registry (Debian's docker-registry on 127.0.0.1) into the
cache: manifests and manifest lists, digests checked, layers cached once, failures that
name the registry's reason within seconds, eviction, and docker save / OCI archives."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shared.images.archive import load_archive
from shared.images.manifests import OCI_INDEX, Platform
from shared.images.pull import obtain_image
from shared.images.store import ImageStore
from shared.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tests.fixtures.registry import (
    Registry,
    TestImage,
    build_layer,
    busybox_layer,
    digest_of,
    push_image,
    push_manifest,
)
from tests.fixtures.servers import free_port


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _image() -> TestImage:
    return TestImage(
        layers=[
            busybox_layer({"app/": None, "app/only-here.txt": b"from the image\n", "gone": b"x"}),
            build_layer({".wh.gone": b"", "app/second": b"2"}),
        ],
        env=["PATH=/bin", "GREETING=hello"],
        working_dir="/app",
    )


async def test_pull_builds_a_root_with_the_layers_applied(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    digest = await push_image(registry_server.host, "tests/app", "v1", _image())
    store = ImageStore(tmp_path / "images")
    image = await obtain_image(store, f"{registry_server.host}/tests/app:v1", session)
    assert image.record.digest == digest
    assert (image.root / "app/only-here.txt").read_text() == "from the image\n"
    assert (image.root / "app/second").read_text() == "2"
    assert not (image.root / "gone").exists()
    assert all((image.root / p).is_dir() for p in ("pfs", "proc", "dev", "tmp", "etc"))
    assert image.config.environment()["GREETING"] == "hello"
    assert image.config.working_dir == "/app"
    assert f"{registry_server.host}/tests/app:v1" in image.record.references
    # Cached: a second obtain does not ask the registry (a tag other than latest).
    again = await obtain_image(store, f"{registry_server.host}/tests/app:v1", session)
    assert again.root == image.root
    by_digest = await obtain_image(store, f"{registry_server.host}/tests/app@{digest}", session)
    assert by_digest.record.digest == digest


async def test_manifest_lists_pick_this_platform(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    host = registry_server.host
    amd = TestImage(layers=[build_layer({"which": b"amd64"})])
    arm = TestImage(layers=[build_layer({"which": b"arm64"})], architecture="arm64")
    entries = []
    for image, arch in ((arm, "arm64"), (amd, "amd64")):
        digest = await push_image(host, "tests/multi", arch, image)
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest, "size": len(image.manifest()),
                        "platform": {"os": "linux", "architecture": arch}})  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    await push_manifest(session, host, "tests/multi", "both", index, OCI_INDEX)
    store = ImageStore(tmp_path / "images")
    pulled = await obtain_image(store, f"{host}/tests/multi:both", session,
                               platform=Platform("linux", "amd64"))  # fmt: skip
    assert (pulled.root / "which").read_text() == "amd64"
    with pytest.raises(FailedPrecondition, match="no manifest for platform linux/riscv64"):
        await obtain_image(ImageStore(tmp_path / "other"), f"{host}/tests/multi:both", session,
                           platform=Platform("linux", "riscv64"))  # fmt: skip


async def test_an_image_for_another_architecture_is_refused(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    image = TestImage(layers=[build_layer({"a": b"1"})], architecture="s390x")
    await push_image(registry_server.host, "tests/s390x", "v1", image)
    with pytest.raises(FailedPrecondition, match="for linux/s390x"):
        await obtain_image(ImageStore(tmp_path), f"{registry_server.host}/tests/s390x:v1", session)


async def test_missing_tags_and_repositories_say_what_the_registry_said(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path)
    await push_image(registry_server.host, "tests/tagged", "v1", _image())
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        await obtain_image(store, f"{registry_server.host}/tests/tagged:nope", session)
    with pytest.raises(NotFound, match=r"NAME_UNKNOWN|MANIFEST_UNKNOWN"):
        await obtain_image(store, f"{registry_server.host}/tests/never:v1", session)


async def test_an_unreachable_registry_fails_within_seconds(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach the registry"):
        await obtain_image(ImageStore(tmp_path), f"127.0.0.1:{free_port()}/x:v1", session)
    assert time.monotonic() - started < 5


async def test_a_registry_that_never_answers_times_out(
    session: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.images.registry as registry

    monkeypatch.setattr(registry, "_TIMEOUT", aiohttp.ClientTimeout(connect=1, sock_read=0.5))
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Unavailable, match="did not answer in time"):
            await obtain_image(ImageStore(tmp_path), f"127.0.0.1:{port}/x:v1", session)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_blob_that_does_not_match_its_digest_is_refused(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    layer = build_layer({"a": b"good"})
    await push_image(registry_server.host, "tests/bad", "v1", TestImage(layers=[layer]))
    # The registry's stored bytes rot (same size, other content): it serves them as they are.
    hex_digest = digest_of(layer).removeprefix("sha256:")
    data = (
        registry_server.storage
        / f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
    )
    data.write_bytes(bytes(reversed(layer)))
    store = ImageStore(tmp_path)
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        await obtain_image(store, f"{registry_server.host}/tests/bad:v1", session)
    assert not store.has_blob(digest_of(layer))
    assert list((tmp_path / "scratch").iterdir()) == []
    assert list((tmp_path / "roots").iterdir()) == []


async def test_a_pinned_digest_that_the_registry_does_not_match_is_refused(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await push_image(registry_server.host, "tests/pinned", "v1", _image())
    wrong = "sha256:" + "0" * 64
    with pytest.raises((NotFound, InvalidArgument)):
        await obtain_image(
            ImageStore(tmp_path), f"{registry_server.host}/tests/pinned:v1@{wrong}", session
        )


async def test_layers_are_stored_once_and_eviction_is_least_recently_used(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    host = registry_server.host
    base = busybox_layer()
    first = TestImage(layers=[base, build_layer({"one": b"1"})])
    second = TestImage(layers=[base, build_layer({"two": b"2"})])
    await push_image(host, "tests/lru", "one", first)
    await push_image(host, "tests/lru", "two", second)
    store = ImageStore(tmp_path)
    one = await obtain_image(store, f"{host}/tests/lru:one", session)
    two = await obtain_image(store, f"{host}/tests/lru:two", session)
    # The shared layer is unpacked once; both roots hold its files by hard link.
    assert len(list((tmp_path / "layers").iterdir())) == 3
    assert (one.root / "bin/busybox").stat().st_ino == (two.root / "bin/busybox").stat().st_ino
    blobs = {p.name for p in (tmp_path / "blobs/sha256").iterdir()}
    assert len(blobs) == 7  # the shared busybox layer once: 2 manifests, 2 configs, 3 layers
    store.touch(one.record.digest)  # `one` is now the more recently used
    store.limit_bytes = one.record.size + 1
    assert store.evict() == [two.record.digest]
    assert not two.root.exists()
    assert len(list((tmp_path / "layers").iterdir())) == 2  # its own layer went with it
    assert (one.root / "bin/busybox").stat().st_size > 0
    assert (tmp_path / "blobs/sha256" / digest_of(base).removeprefix("sha256:")).exists()
    store.limit_bytes = 0
    assert store.evict(keep=[one.record.digest]) == []


async def test_docker_save_and_oci_archives_load(tmp_path: Path) -> None:
    layer = build_layer({"from-archive": b"yes"}, compress=False)
    image = TestImage(layers=[])
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "config": {"Env": ["A=1"]}}).encode()  # fmt: skip
    members = {
        "manifest.json": json.dumps(
            [{"Config": "cfg.json", "RepoTags": ["example/app:v2"], "Layers": ["abc/layer.tar"]}]
        ).encode(),
        "cfg.json": config,
        "abc/layer.tar": layer,
    }
    del image
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = ImageStore(tmp_path / "images")
    [loaded] = load_archive(store, archive)
    assert loaded.record.references == ["docker.io/example/app:v2"]
    assert (loaded.root / "from-archive").read_text() == "yes"
    assert loaded.config.environment() == {"A": "1"}
    # OCI layout: the same blobs by digest, an index naming the manifest.
    oci_image = TestImage(layers=[build_layer({"oci": b"1"})])
    manifest = oci_image.manifest()
    blobs = {digest_of(b): b for b in (manifest, oci_image.config(), *oci_image.layers)}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest_of(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": "example/oci:v1"}}]}  # fmt: skip
    layout = tmp_path / "oci.tar"
    with tarfile.open(layout, "w") as tar:
        for name, data in {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                           "index.json": json.dumps(index).encode(),
                           **{f"blobs/sha256/{d[7:]}": b for d, b in blobs.items()}}.items():  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    [oci] = load_archive(store, layout)
    assert oci.record.references == ["docker.io/example/oci:v1"]
    assert (oci.root / "oci").read_text() == "1"
    with pytest.raises(InvalidArgument, match="neither"):
        (tmp_path / "empty.tar").write_bytes(b"")
        with tarfile.open(tmp_path / "empty.tar", "w"):
            pass
        load_archive(store, tmp_path / "empty.tar")


async def test_an_anonymous_bearer_token_is_fetched_from_the_challenge_realm(
    registry_server: Registry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Public registries (Docker Hub, ghcr.io) answer 401 with a Bearer challenge and hand
    out anonymous pull tokens; a gate in front of the real registry plays that part."""
    await push_image(registry_server.host, "tests/gated", "v1", _image())
    issued: list[dict[str, str]] = []
    scope = "repository:tests/gated:pull"

    async def token(request: web.Request) -> web.Response:
        issued.append(dict(request.query))
        return web.json_response({"token": f"T-{request.query.get('scope')}"})

    async def gate(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer T-{scope}":
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="tests",scope="{scope}"'
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        headers = {"Accept": request.headers.get("Accept", "*/*")}
        url = f"http://{registry_server.host}{request.path}"
        async with session.get(url, headers=headers) as reply:
            body = await reply.read()
            kept = {k: v for k, v in reply.headers.items()
                    if k in ("Content-Type", "Docker-Content-Digest")}  # fmt: skip
            return web.Response(body=body, status=reply.status, headers=kept)

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get("/v2/{path:.*}", gate)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        image = await obtain_image(
            ImageStore(tmp_path), f"127.0.0.1:{port}/tests/gated:v1", session
        )
    finally:
        await runner.cleanup()
    assert (image.root / "app/only-here.txt").exists()
    assert issued == [{"service": "tests", "scope": scope}]  # one token for the whole pull
