"""The pure core of images: references, manifests and platforms, credentials, and layers
applied to a root (whiteouts, opaque directories, and the hostile tars a registry may
send)."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from shared.images.credentials import Credentials, lookup, parse_docker_config
from shared.images.layers import apply_layer
from shared.images.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_manifest,
    select_platform,
)
from shared.images.reference import is_loopback, parse_reference
from shared.platform.errors import FailedPrecondition, InvalidArgument
from tests.fixtures.registry import build_layer

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("pachyderm/opencv", "docker.io", "pachyderm/opencv", "latest", None),
        ("docker.io/pachyderm/opencv:1.0", "docker.io", "pachyderm/opencv", "1.0", None),
        ("index.docker.io/python:3.12-slim", "docker.io", "library/python", "3.12-slim", None),
        ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("ghcr.io/o/r@" + D1, "ghcr.io", "o/r", None, D1),
        ("ghcr.io/o/r:v1@" + D1, "ghcr.io", "o/r", "v1", D1),
        ("[::1]:5000/r:v", "[::1]:5000", "r", "v", None),
    ],
)
def test_references_parse_as_docker_reads_them(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text", ["", "Ubuntu", "a b", "x:", "x@sha256:zz", "x:t/../y", "x//y"])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(text)


def test_docker_hub_is_spoken_to_at_its_api_host() -> None:
    assert parse_reference("ubuntu").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:80", True), ("[::1]:5000", True),
     ("10.0.0.1:5000", False), ("ghcr.io", False), ("localhost.example.com", False)],
)  # fmt: skip
def test_only_loopback_registries_get_plain_http(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _index(*platforms: tuple[str, str, str | None]) -> bytes:
    entries = []
    for number, (os_name, arch, variant) in enumerate(platforms):
        platform: dict[str, str] = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant
        entries.append({"mediaType": DOCKER_MANIFEST, "digest": "sha256:" + str(number) * 64,
                        "size": 10, "platform": platform})  # fmt: skip
    return json.dumps({"schemaVersion": 2, "manifests": entries}).encode()


def test_a_manifest_list_gives_this_platforms_manifest() -> None:
    index = parse_manifest(
        _index(("linux", "arm64", "v8"), ("linux", "amd64", None), ("unknown", "unknown", None)),
        DOCKER_LIST,
    )
    assert isinstance(index, Index)
    assert select_platform(index, Platform("linux", "amd64")).digest == "sha256:" + "1" * 64
    assert select_platform(index, Platform("linux", "arm64", "v8")).digest == "sha256:" + "0" * 64


def test_variant_prefers_an_exact_match_then_none() -> None:
    index = parse_manifest(_index(("linux", "arm", "v6"), ("linux", "arm", "v7")), OCI_INDEX)
    assert isinstance(index, Index)
    assert select_platform(index, Platform("linux", "arm", "v7")).digest == "sha256:" + "1" * 64


def test_no_manifest_for_this_platform_names_what_the_image_has() -> None:
    index = parse_manifest(_index(("linux", "s390x", None), ("windows", "amd64", None)), OCI_INDEX)
    assert isinstance(index, Index)
    with pytest.raises(FailedPrecondition, match=r"linux/amd64.*linux/s390x, windows/amd64"):
        select_platform(index, Platform("linux", "amd64"))


def test_manifest_types_are_told_by_header_body_or_shape() -> None:
    body = {"schemaVersion": 2, "config": {"digest": D1, "size": 3},
            "layers": [{"digest": D2, "size": 4, "mediaType": "x"}]}  # fmt: skip
    manifest = parse_manifest(json.dumps(body).encode(), "application/json")
    assert isinstance(manifest, Manifest)
    assert [layer.digest for layer in manifest.layers] == [D2]
    with pytest.raises(FailedPrecondition, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}', None)
    with pytest.raises(InvalidArgument, match="only sha256"):
        parse_manifest(
            json.dumps({**body, "config": {"digest": "md5:00", "size": 1}}).encode(), None
        )
    with pytest.raises(InvalidArgument, match="not JSON"):
        parse_manifest(b"<html>", None)


def test_config_gives_env_workdir_user_entrypoint() -> None:
    config = parse_config(json.dumps({
        "os": "linux", "architecture": "amd64",
        "config": {"Env": ["PATH=/bin", "A=b=c", "EMPTY"], "WorkingDir": "/app", "User": "1000:1000",
                   "Entrypoint": ["/bin/sh", "-c"], "Cmd": "echo"},
    }).encode())  # fmt: skip
    assert config.environment() == {"PATH": "/bin", "A": "b=c", "EMPTY": ""}
    assert (config.working_dir, config.user) == ("/app", "1000:1000")
    assert (config.entrypoint, config.cmd) == (("/bin/sh", "-c"), ("echo",))
    assert config.platform == Platform("linux", "amd64")


def test_docker_config_json_credentials() -> None:
    auth = base64.b64encode(b"alice:s3:cret").decode()
    known = parse_docker_config(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "127.0.0.1:5000": {"username": "bob", "password": "pw"},
    }}).encode(), "config.json")  # fmt: skip
    assert lookup(known, "registry-1.docker.io") == Credentials("alice", "s3:cret")
    assert lookup(known, "127.0.0.1:5000") == Credentials("bob", "pw")
    assert lookup(known, "ghcr.io") is None
    assert "pw" not in repr(known)
    with pytest.raises(InvalidArgument, match="base64"):
        parse_docker_config(b'{"auths": {"x": {"auth": "!!"}}}', "config.json")


# Layers


def _apply(root: Path, layer: bytes) -> None:
    apply_layer(io.BytesIO(layer), root)


def _tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[name] = "/"
        else:
            found[name] = path.read_bytes().decode()
    return found


def test_layers_apply_in_order_with_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    _apply(tmp_path, build_layer({
        "etc/": None, "etc/a": b"a1", "etc/b": b"b1", "keep/": None, "keep/x": b"x",
        "opq/": None, "opq/old": b"old", "opq/sub/": None, "opq/sub/deep": b"d",
    }))  # fmt: skip
    _apply(tmp_path, build_layer({
        "etc/.wh.a": b"", "etc/b": b"b2", "opq/new": b"new", "opq/.wh..wh..opq": b"",
        ".wh.keep": b"",
    }))  # fmt: skip
    assert _tree(tmp_path) == {"etc": "/", "etc/b": "b2", "opq": "/", "opq/new": "new"}


def test_plain_and_zstd_layers_apply_too(tmp_path: Path) -> None:
    import zstandard

    plain = build_layer({"a": b"1"}, compress=False)
    _apply(tmp_path, plain)
    _apply(tmp_path, zstandard.ZstdCompressor().compress(build_layer({"b": b"2"}, compress=False)))
    assert _tree(tmp_path) == {"a": "1", "b": "2"}


def test_a_file_replaces_a_directory_and_back(tmp_path: Path) -> None:
    _apply(tmp_path, build_layer({"x/": None, "x/y": b"1", "f": b"file"}))
    _apply(tmp_path, build_layer({"x": b"now a file", "f/": None, "f/z": b"2"}))
    assert _tree(tmp_path) == {"f": "/", "f/z": "2", "x": "now a file"}


def test_dot_dot_members_cannot_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InvalidArgument, match="outside the image root"):
        _apply(root, build_layer({"../escaped": b"x"}))
    with pytest.raises(InvalidArgument, match="outside the image root"):
        _apply(root, build_layer({"a/../../escaped": b"x"}))
    assert not (tmp_path / "escaped").exists()


def test_writes_through_symlinks_stay_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    # An absolute symlink, a relative one climbing out, then files written "through" them.
    _apply(root, build_layer({
        "abs": ("link", str(outside)), "rel": ("link", "../../outside"), "lib": ("link", "usr/lib"),
    }))  # fmt: skip
    _apply(root, build_layer({"abs/f": b"1", "rel/g": b"2", "lib/h": b"3"}))
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "f").read_bytes() == b"1"
    assert (root / "outside" / "g").read_bytes() == b"2"
    assert (root / "usr/lib/h").read_bytes() == b"3"
    assert os.readlink(root / "abs") == str(outside)  # kept as the image wrote it


def test_hard_links_must_point_at_files_of_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("host")
    _apply(root, build_layer({"a": b"1", "b": ("hard", "a")}))
    assert (root / "b").stat().st_ino == (root / "a").stat().st_ino
    with pytest.raises(InvalidArgument):
        _apply(root, build_layer({"c": ("hard", "../secret")}))
    _apply(root, build_layer({"s": ("link", str(tmp_path / "secret"))}))
    with pytest.raises(InvalidArgument, match="not a file of the image"):
        _apply(root, build_layer({"d": ("hard", "s")}))


def test_device_nodes_are_skipped_and_setuid_dropped(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in (("dev/null", tarfile.CHRTYPE), ("dev/sda", tarfile.BLKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor = kind, 1, 3
            archive.addfile(info)
        info = tarfile.TarInfo("su")
        info.mode, info.size = 0o4755, 1
        archive.addfile(info, io.BytesIO(b"x"))
    stats = apply_layer(io.BytesIO(buffer.getvalue()), tmp_path)
    assert stats.skipped == 2
    assert not (tmp_path / "dev/null").exists()
    assert (tmp_path / "su").stat().st_mode & 0o7777 == 0o755


def test_a_layer_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a tar"):
        _apply(tmp_path, b"\x1f\x8bnot gzip at all" * 10)
