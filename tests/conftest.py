"""Test-session fixtures: real servers started once per session (see tests/fixtures/)."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.storage",
    "tests.fixtures.s3",
    "tests.fixtures.pfs",
    "tests.fixtures.s3gateway",
    "tests.fixtures.cluster",
    "tests.fixtures.registry",
]
