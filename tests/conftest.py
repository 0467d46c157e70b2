"""Test-session fixtures: real servers started once per session (see tests/fixtures/).

The suite runs on pytest-xdist workers (``make test``: ``-n 2 --dist loadgroup``; the
reasons are in tests/README.md). Two test processes share this machine, so nothing a
test starts may use a fixed port or a fixed path: servers take ports the OS picks
(``free_port``), ``tusk up`` clusters start with ``--any-ports`` in private homes, and
each test process gets a private ``$TUSK_HOME`` (below) for anything that falls back to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

pytest_plugins = [
    "tests.fixtures.parts",  # first: other fixture modules import it
    "tests.fixtures.servers",
    "tests.fixtures.storage",
    "tests.fixtures.s3",
    "tests.fixtures.pfs",
    "tests.fixtures.s3gateway",
    "tests.fixtures.cluster",
    "tests.fixtures.registry",
]

# Fixture scopes wider than a test but narrower than the session: a module's tests that
# use one must run in one process, so that the fixture (a whole cluster) starts once.
_SHARED_SCOPES = frozenset({"class", "module", "package"})
_SESSION_HOME = "_tusk_session_home"


def pytest_configure(config: pytest.Config) -> None:
    """A private ``$TUSK_HOME`` for this test process: a test that forgets to set its own
    never reads or writes ``~/.tusk`` (contexts, config) or another process's home."""
    home = tempfile.mkdtemp(prefix="tusk-test-session-home-")
    setattr(config, _SESSION_HOME, home)
    os.environ["TUSK_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home = getattr(config, _SESSION_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def _shares_a_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` the tests of a module that uses a module-scoped fixture
    form one group (one worker, the fixture started once); every other test is scheduled
    on its own, so the two workers stay evenly loaded to the end."""
    for item in items:
        if _shares_a_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
