"""The CLI starts with what the chosen command needs, and no more (issue #12).

``tusk version`` and every help page used to import aiohttp (0.1-0.4 s of start-up here)
through the command modules. The commands are now imported by name when run
(``tusk/cli/command_index.py``); these tests run the real CLI in a subprocess and read
which modules it had imported when it exited (``sys.modules``: ``-X importtime`` does not
report modules loaded through ``importlib.import_module``, as the command index loads them).
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import tusk.cli
from tusk.cli.command_index import TOP_LEVEL, VERB_NOUNS, module_commands

# What no command may import unless it talks to a cluster or needs the library:
# the HTTP client, the event loop, the storage code, the database and bus clients,
# YAML (only -o yaml), the progress bar (only on a terminal).
HEAVY = ("aiohttp", "asyncio", "asyncpg", "nats", "zstandard", "blake3", "yaml", "tqdm")

MARK = "IMPORTED-MODULES:"
# The console script's body, then the names of every module loaded, however it ended.
RUN_CLI = f"""
import sys
try:
    from tusk.cli.main import main
    main()
finally:
    sys.stderr.write("\\n{MARK}" + " ".join(sorted(sys.modules)) + "\\n")
"""


def imported_modules(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], int]:
    """The modules ``tusk ARGS`` had imported when it exited, and its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    listed = [line for line in done.stderr.splitlines() if line.startswith(MARK)]
    assert listed, done.stderr
    return set(listed[-1][len(MARK) :].split()), done.returncode


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize(
    "args",
    [
        ["version"],
        ["--help"],
        ["list", "--help"],
        ["put", "--help"],
        ["put", "file", "--help"],
        ["list", "repo", "--help"],
        ["list", "commit", "--help"],
        ["create", "pipeline", "--help"],
        ["logs", "--help"],
        ["mount", "--help"],
        ["image", "--help"],
        ["config", "--help"],
    ],
    ids=lambda args: " ".join(args),
)
def test_commands_that_make_no_request_import_no_client_library(args: list[str]) -> None:
    modules, code = imported_modules(*args)
    assert code == 0
    assert "tusk.cli.main" in modules  # the subprocess really ran the CLI
    assert heavy_among(modules) == []


def test_version_imports_only_its_own_command_module() -> None:
    modules, code = imported_modules("version")
    assert code == 0
    commands = sorted(m for m in modules if m.startswith("tusk.cli.") and m.endswith("_commands"))
    assert commands == ["tusk.cli.cluster_commands"]


def test_a_command_that_calls_the_cluster_does_import_the_client(tmp_path: Path) -> None:
    # The control for the tests above: the same reading sees aiohttp when it is imported.
    env = {
        "TUSK_HOME": str(tmp_path),
        "TUSK_PFS_URL": "http://127.0.0.1:9",
        "PATH": "/usr/bin:/bin",
    }
    modules, code = imported_modules("list", "repo", env=env)
    assert code == 1  # nothing listens on port 9: one error line, exit 1
    assert "aiohttp" in modules
    assert "tusk.cli.file_commands" not in modules
    # The SDK keeps the storage code (hashing, compression, chunking) for its callers that
    # read chunks themselves; a CLI request needs none of it.
    assert not {"shared.storage.chunking", "blake3", "zstandard"} & modules


def _command_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules(tusk.cli.__path__)
        if info.name.endswith("_commands")
    )


def test_the_command_index_names_every_command_where_it_is_defined() -> None:
    defined_nouns: dict[tuple[str, str], str] = {}
    defined_top: dict[str, str] = {}
    for name in _command_modules():
        pairs, top = module_commands(name)
        for verb, command in pairs:
            assert command.name is not None
            defined_nouns[(verb, command.name)] = name
        for command in top:
            assert command.name is not None
            defined_top[command.name] = name
    indexed_nouns = {
        (verb, noun): module for verb, nouns in VERB_NOUNS.items() for noun, module in nouns.items()
    }
    # A mismatch names the command to add to (or drop from) tusk/cli/command_index.py.
    assert defined_nouns == indexed_nouns
    assert defined_top == TOP_LEVEL


def test_every_indexed_command_resolves_through_the_root() -> None:
    cli = importlib.import_module("tusk.cli.main").cli
    with click.Context(cli) as ctx:
        for verb, nouns in VERB_NOUNS.items():
            group = cli.get_command(ctx, verb)
            assert isinstance(group, click.Group)
            assert group.list_commands(ctx) == sorted(nouns)
            for noun in nouns:
                command = group.get_command(ctx, noun)
                assert command is not None and command.name == noun
        for name in TOP_LEVEL:
            command = cli.get_command(ctx, name)
            assert command is not None and command.name == name
        assert cli.get_command(ctx, "nonsense") is None
