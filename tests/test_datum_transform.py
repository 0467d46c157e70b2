"""The transform fields a datum honours: accept_return_code, working_dir, user, secrets
(real bubblewrap, a real local store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scheduler.datum_runner import run_datum
from services.scheduler.datum_secrets import MASK
from shared.pipeline.spec import SecretUse
from tests.fixtures.counting_store import CountingStore
from tests.test_datum_runner import (
    leftovers,
    make_input,
    make_task,
    needs_bwrap,
    output_files,
)

TOKEN = "s3cr3t-t0ken-value"
CERT = b"-----BEGIN CERT-----\nMIIBsecretline\n-----END CERT-----\n"
SECRETS = {"creds": {"token": TOKEN.encode(), "user": b"robot"}, "tls": {"cert.pem": CERT}}


@needs_bwrap
async def test_accepted_return_code_counts_as_success_and_stores_output(
    store: CountingStore, workdir: Path
) -> None:
    task = make_task([], "echo out > /pfs/out/o; exit 3", accept_return_code=(3, 4))
    result = await run_datum(store, task, workdir=workdir)
    assert (result.state, result.exit_code, result.error) == ("SUCCESS", 3, None)
    assert await output_files(store, result) == {"/o": b"out\n"}
    other = await run_datum(
        store, make_task([], "exit 5", accept_return_code=(3,)), workdir=workdir
    )
    assert (other.state, other.error) == ("FAILED", "command exited with code 5")


@needs_bwrap
async def test_accepted_return_code_applies_to_err_cmd(store: CountingStore, workdir: Path) -> None:
    task = make_task([], "exit 2", err_cmd=("sh", "-c", "exit 3"), accept_return_code=(3,))
    result = await run_datum(store, task, workdir=workdir)
    assert result.state == "RECOVERED"


@needs_bwrap
async def test_working_dir_is_where_the_command_starts(store: CountingStore, workdir: Path) -> None:
    source = await make_input(store, {"/a/b.txt": b"b"})
    default = await run_datum(store, make_task([source], "pwd > /pfs/out/pwd"), workdir=workdir)
    assert await output_files(store, default) == {"/pwd": b"/pfs\n"}
    task = make_task(
        [source], "pwd > /pfs/out/pwd; cat b.txt > /pfs/out/b", working_dir="/pfs/in/a"
    )
    result = await run_datum(store, task, workdir=workdir)
    assert await output_files(store, result) == {"/pwd": b"/pfs/in/a\n", "/b": b"b"}


@needs_bwrap
async def test_a_sandbox_that_cannot_start_fails_the_datum_with_bwraps_reason(
    store: CountingStore, workdir: Path
) -> None:
    task = make_task(
        [], "echo never", working_dir="/nowhere", err_cmd=("sh", "-c", "echo recovering")
    )
    result = await run_datum(store, task, workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == (
        "the sandbox could not start: Can't chdir to /nowhere: No such file or directory"
    )
    # err_cmd is for the command failing, not for a sandbox that never ran it.
    assert "never" not in result.logs and "recovering" not in result.logs
    assert leftovers(workdir) == []


@needs_bwrap
async def test_user_sets_the_commands_ids_and_its_output_is_stored(
    store: CountingStore, workdir: Path
) -> None:
    script = "id -u > /pfs/out/uid; id -g > /pfs/out/gid; echo x > /tmp/x"
    result = await run_datum(store, make_task([], script, user="1000:1001"), workdir=workdir)
    assert (result.state, result.error) == ("SUCCESS", None)
    assert await output_files(store, result) == {"/uid": b"1000\n", "/gid": b"1001\n"}
    named = await run_datum(
        store, make_task([], "id -u > /pfs/out/uid", user="nobody"), workdir=workdir
    )
    assert await output_files(store, named) == {"/uid": b"65534\n"}


async def test_an_unknown_user_fails_the_datum(store: CountingStore, workdir: Path) -> None:
    result = await run_datum(store, make_task([], "true", user="no-such-user"), workdir=workdir)
    assert result.state == "FAILED"
    assert result.error == (
        "transform.user 'no-such-user': no user 'no-such-user' in the sandbox; "
        "give uid[:gid] numbers"
    )


@needs_bwrap
async def test_secrets_become_variables_and_read_only_files_and_never_reach_the_logs(
    store: CountingStore, workdir: Path
) -> None:
    uses = (
        SecretUse("creds", key="token", env_var="TOKEN"),
        SecretUse("tls", mount_path="/etc/tls"),
    )
    script = (
        'echo "token is $TOKEN"; cat /etc/tls/cert.pem; '
        'printf %s "$TOKEN" | wc -c > /pfs/out/token-length; '
        "cmp -s /etc/tls/cert.pem /pfs/in/cert.pem && echo same > /pfs/out/cert; "
        "stat -c %a /etc/tls/cert.pem > /pfs/out/mode; "
        "touch /etc/tls/new 2> /dev/null || echo read-only > /pfs/out/ro"
    )
    source = await make_input(store, {"/cert.pem": CERT})
    task = make_task([source], script, secrets=uses)
    result = await run_datum(store, task, workdir=workdir, secrets=SECRETS)
    assert (result.state, result.error) == ("SUCCESS", None)
    assert await output_files(store, result) == {
        "/token-length": f"{len(TOKEN)}\n".encode(),
        "/cert": b"same\n",
        "/mode": b"400\n",
        "/ro": b"read-only\n",
    }
    assert TOKEN not in result.logs and "MIIBsecretline" not in result.logs
    assert f"token is {MASK}" in result.logs
    assert leftovers(workdir) == []


@pytest.mark.parametrize(
    ("use", "error"),
    [
        (SecretUse("creds", key="missing", env_var="X"), "secret 'creds' has no key 'missing'"),
        (
            SecretUse("absent", key="k", env_var="X"),
            "secret 'absent' was not fetched for this datum",
        ),
        (SecretUse("creds", env_var="X"), "secret 'creds': env_var 'X' needs a key"),
        (
            SecretUse("blob", key="bin", env_var="X"),
            "secret 'blob': key 'bin' is not text, so it cannot be the variable X; "
            "mount it as a file (mount_path) instead",
        ),
        (
            SecretUse("creds", mount_path="/pfs/out/creds"),
            "secret 'creds': mount_path /pfs/out/creds is under /pfs, which holds the "
            "datum's inputs and output",
        ),
    ],
)
async def test_a_secret_that_cannot_be_given_fails_the_datum_without_its_value(
    store: CountingStore, workdir: Path, use: SecretUse, error: str
) -> None:
    values = {**SECRETS, "blob": {"bin": b"\xff\x00" + TOKEN.encode()}}
    task = make_task([], "true", secrets=(use,))
    result = await run_datum(store, task, workdir=workdir, secrets=values)
    assert (result.state, result.error) == ("FAILED", error)
    assert TOKEN not in result.logs
    assert leftovers(workdir) == []
