"""The bubblewrap sandbox: what a command sees, what it may write, and how it is stopped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.scheduler.sandbox import (
    Sandbox,
    SandboxSettings,
    bwrap_available,
    remove_dead_etc_roots,
)
from shared.platform.errors import InvalidArgument

# A missing bubblewrap fails these tests (tests/fixtures/parts.py), never skips them.
pytestmark = pytest.mark.usefixtures("bubblewrap")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "in"
    out = tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "a.txt").write_text("hello\n")
    return data, out


async def sh(
    script: str,
    dirs: tuple[Path, Path],
    *,
    stdin: list[str] | None = None,
    timeout: float | None = 10.0,
    sandbox: Sandbox | None = None,
) -> tuple[int | None, str, bool]:
    sandbox = sandbox or Sandbox()
    data, out = dirs
    argv = sandbox.argv(["sh", "-c", script], inputs={"in": data}, out=out)
    run = await sandbox.run(argv, stdin or [], sandbox.environment({"X": "1"}), timeout)
    assert run.setup_error is None
    return run.exit_code, run.logs, run.timed_out


def processes_with(marker: str) -> dict[int, int]:
    """pid → process group of each live (non-zombie) process with ``marker`` in its command."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if marker.encode() in cmdline and fields[0] != "Z":
            found[int(name)] = int(fields[2])
    return found


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes of the process group ``pgid`` (zombies await the host's init)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(name))
    return members


async def test_inputs_are_read_only_and_output_is_writable(dirs: tuple[Path, Path]) -> None:
    code, logs, _ = await sh(
        "cat /pfs/in/a.txt > /pfs/out/copy.txt; "
        "echo x > /pfs/in/new.txt || echo in-refused; "
        "echo x > /pfs/stray.txt || echo pfs-refused; "
        "echo x > /tmp/scratch && echo tmp-ok",
        dirs,
    )
    assert code == 0
    assert logs.count("Read-only file system") == 2
    assert "in-refused" in logs and "pfs-refused" in logs and "tmp-ok" in logs
    assert (dirs[1] / "copy.txt").read_text() == "hello\n"
    assert sorted(p.name for p in dirs[0].iterdir()) == ["a.txt"]


async def test_no_network_but_loopback(dirs: tuple[Path, Path]) -> None:
    code, logs, _ = await sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", dirs)
    assert code == 0
    assert logs.split() == ["lo"]


async def test_stdin_lines_are_fed_newline_terminated(dirs: tuple[Path, Path]) -> None:
    code, logs, _ = await sh("cat; echo end", dirs, stdin=["first", "second"])
    assert (code, logs) == (0, "first\nsecond\nend\n")


async def test_environment_is_exactly_what_was_given(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SECRET", "must-not-leak")
    code, logs, _ = await sh("env", dirs)
    assert code == 0
    names = {line.split("=", 1)[0] for line in logs.splitlines()}
    # PWD and SHLVL are set by sh itself.
    assert names - {"PWD", "SHLVL", "_"} == {"PATH", "HOME", "LANG", "X"}
    assert "HOME=/tmp" in logs and "LANG=C.UTF-8" in logs and "PWD=/pfs" in logs


async def test_stdout_and_stderr_are_interleaved(dirs: tuple[Path, Path]) -> None:
    code, logs, _ = await sh("echo one; echo two >&2; echo three; exit 4", dirs)
    assert (code, logs) == (4, "one\ntwo\nthree\n")


async def test_logs_keep_head_and_tail_when_capped(dirs: tuple[Path, Path]) -> None:
    sandbox = Sandbox(log_limit=1000)
    script = "echo START; i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; echo END"
    code, logs, _ = await sh(script, dirs, sandbox=sandbox)
    assert code == 0
    assert logs.startswith("START\n") and logs.endswith("END\n")
    assert "bytes of logs cut" in logs
    assert len(logs) < 1100


async def test_timeout_kills_every_process_of_the_command(dirs: tuple[Path, Path]) -> None:
    marker = f"60.{uuid.uuid4().int % 10**9}"
    seen: dict[int, int] = {}

    async def watch() -> None:
        while not seen:
            await asyncio.sleep(0.05)
            seen.update(processes_with(marker))

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        group.create_task(watch())
        run = group.create_task(sh(f"sleep {marker} & sleep {marker}; wait", dirs, timeout=0.5))
    elapsed = time.monotonic() - started
    code, _, timed_out = run.result()
    assert timed_out and code is None
    assert 0.5 <= elapsed < 1.5
    assert seen, "the command never started"
    assert processes_with(marker) == {}
    groups = set(seen.values())
    assert {pgid: live_group_members(pgid) for pgid in groups} == {pgid: [] for pgid in groups}


async def test_cancel_kills_the_command_and_reraises(dirs: tuple[Path, Path]) -> None:
    marker = f"60.{uuid.uuid4().int % 10**9}"
    task = asyncio.create_task(sh(f"sleep {marker}", dirs, timeout=None))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if processes_with(marker):
            break
    groups = set(processes_with(marker).values())
    assert groups
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_with(marker) == {}
    assert {pgid: live_group_members(pgid) for pgid in groups} == {pgid: [] for pgid in groups}


async def test_python3_is_the_projects_interpreter(dirs: tuple[Path, Path]) -> None:
    sandbox = Sandbox()
    data, out = dirs
    argv = sandbox.argv(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        inputs={"in": data},
        out=out,
    )
    code, logs, _, _ = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert code == 0, logs
    assert logs.strip() == "{}.{}".format(*sys.version_info[:2])


async def test_missing_command_fails_with_a_message(dirs: tuple[Path, Path]) -> None:
    sandbox = Sandbox()
    argv = sandbox.argv(["no-such-command-xyz"], inputs={}, out=dirs[1])
    code, logs, timed_out, setup_error = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert code != 0 and not timed_out
    assert "no-such-command-xyz" in logs
    assert setup_error == "execvp no-such-command-xyz: No such file or directory"


async def test_a_sandbox_that_cannot_start_is_told_apart_from_a_failing_command(
    dirs: tuple[Path, Path],
) -> None:
    sandbox = Sandbox()
    settings = SandboxSettings(working_dir="/no/such/dir")
    argv = sandbox.argv(["true"], inputs={}, out=dirs[1], settings=settings)
    broken = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert broken.setup_error == "Can't chdir to /no/such/dir: No such file or directory"
    failing = await sandbox.run(
        sandbox.argv(["sh", "-c", "echo 'bwrap: lookalike' >&2; exit 1"], inputs={}, out=dirs[1]),
        [],
        sandbox.environment({}),
        10.0,
    )
    assert (failing.exit_code, failing.setup_error) == (1, None)


async def test_settings_set_the_directory_the_ids_and_read_only_mounts(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    data, out = dirs
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "f").write_text("extra")
    settings = SandboxSettings(
        working_dir="/pfs/in", user=(4242, 4343), mounts=((tmp_path / "extra", "/opt/extra"),)
    )
    sandbox = Sandbox()
    script = "pwd; id -u; id -g; cat /opt/extra/f; echo; touch /opt/extra/g || echo refused"
    argv = sandbox.argv(["sh", "-c", script], inputs={"in": data}, out=out, settings=settings)
    run = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert run.exit_code == 0, run.logs
    lines = run.logs.splitlines()
    assert lines[:4] == ["/pfs/in", "4242", "4343", "extra"]
    assert lines[-1] == "refused"


@pytest.mark.parametrize(
    ("user", "ids"),
    [
        (None, None),
        ("1000", (1000, 1000)),
        ("1000:7", (1000, 7)),
        ("0", (0, 0)),
        ("root", (0, 0)),
        ("nobody", (65534, 65534)),
        ("65534", (65534, 65534)),
        ("1000:nogroup", (1000, 65534)),
    ],
)
def test_transform_user_numbers_become_ids(user: str | None, ids: tuple[int, int] | None) -> None:
    assert Sandbox().identity(user) == ids


@pytest.mark.parametrize("user", ["-1", "1:x-no-such-group", "4294967295", "nobody-at-all"])
def test_transform_user_that_names_no_id_is_refused(user: str) -> None:
    with pytest.raises(InvalidArgument, match=f"transform.user {user!r}"):
        Sandbox().identity(user)


def test_bwrap_missing_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = bwrap_available()
    assert reason is not None
    assert "not installed" in reason and "apt-get install bubblewrap" in reason


def test_bwrap_that_cannot_sandbox_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert bwrap_available() == (
        "bubblewrap cannot create a sandbox here: bwrap: No permissions to creating new namespace"
    )


def test_bwrap_is_usable_here() -> None:
    assert bwrap_available() is None


async def test_commands_run_as_nobody_with_an_etc_of_their_own(dirs: tuple[Path, Path]) -> None:
    """Issue #16: no uid of the host's, no /etc of the host's (so no /etc/shadow)."""
    script = (
        "id -u; id -g; whoami; cut -d: -f1 /etc/passwd | tr '\\n' ' '; echo; "
        "test -e /etc/shadow || echo no-shadow; "
        "touch /etc/x 2>/dev/null || echo etc-read-only; "
        "touch /usr/x 2>/dev/null || echo usr-read-only; "
        "awk 'BEGIN { print \"awk-works\" }'; getent hosts localhost | cut -c1-3; "
        "echo out > /pfs/out/by-nobody && echo out-writable"
    )
    code, logs, _ = await sh(script, dirs)
    assert code == 0, logs
    assert logs.splitlines() == [
        "65534",
        "65534",
        "nobody",
        "root nobody ",
        "no-shadow",
        "etc-read-only",
        "usr-read-only",
        "awk-works",
        "::1",
        "out-writable",
    ]
    # Host side: the worker's own file, readable by it.
    assert (dirs[1] / "by-nobody").read_text() == "out\n"


async def test_another_uid_gets_a_name_in_the_sandbox(dirs: tuple[Path, Path]) -> None:
    sandbox = Sandbox()
    settings = SandboxSettings(user=sandbox.identity("1000"))
    argv = sandbox.argv(["sh", "-c", "whoami; id -gn"], inputs={}, out=dirs[1], settings=settings)
    run = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert run.logs.splitlines() == ["tusk", "tusk"]


def test_etc_directories_of_dead_workers_are_swept(tmp_path: Path) -> None:
    """A worker killed by SIGKILL cannot remove its sandbox /etc; the next one does."""
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    gone = tmp_path / f"tusk-sandbox-etc-{int(dead.stdout)}-abc"
    alive = tmp_path / f"tusk-sandbox-etc-{os.getpid()}-def"
    for path in (gone, alive):
        (path / "65534-65534").mkdir(parents=True)
    remove_dead_etc_roots(tmp_path)
    assert not gone.exists() and alive.exists()
