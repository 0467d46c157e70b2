"""Test-session fixtures: real servers started once per session (see tests/fixtures/)."""

import pytest

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.storage",
    "tests.fixtures.s3",
    "tests.fixtures.pfs",
    "tests.fixtures.s3gateway",
    "tests.fixtures.cluster",
    "tests.fixtures.registry",
]

# Modules that start whole clusters with `tusk up` on the default ports (7651…): under
# pytest-xdist they share one worker, one after another; every other test uses ports the
# OS picks and runs on any worker.
TUSK_UP_MODULES = frozenset(
    {
        "test_api_fuzz",
        "test_cli",
        "test_console_browser",
        "test_crash_suite",
        "test_embedded",
        "test_embedded_down",
        "test_image_tusk_up",
        "test_lifecycle_tusk_up",
        "test_pachyderm_examples",
        "test_request_guard",
        "test_s3_clients",
        "test_scheduler_engine_death",
        "test_secrets",
    }
)


def pytest_collection_modifyitems(config: object, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in TUSK_UP_MODULES:
            item.add_marker(pytest.mark.xdist_group("tusk-up"))
