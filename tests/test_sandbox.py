"""The bubblewrap sandbox: what a command sees, what it may write, and how it is stopped."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.scheduler.sandbox import Sandbox, bwrap_available

pytestmark = pytest.mark.skipif(
    bwrap_available() is not None, reason=f"no bubblewrap sandbox: {bwrap_available()}"
)


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
    return await sandbox.run(argv, stdin or [], sandbox.environment({"X": "1"}), timeout)


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
    code, logs, _ = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert code == 0, logs
    assert logs.strip() == "{}.{}".format(*sys.version_info[:2])


async def test_missing_command_fails_with_a_message(dirs: tuple[Path, Path]) -> None:
    sandbox = Sandbox()
    argv = sandbox.argv(["no-such-command-xyz"], inputs={}, out=dirs[1])
    code, logs, timed_out = await sandbox.run(argv, [], sandbox.environment({}), 10.0)
    assert code != 0 and not timed_out
    assert "no-such-command-xyz" in logs


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
