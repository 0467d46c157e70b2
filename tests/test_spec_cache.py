"""The scheduler parses a pipeline's spec once per version, not per event or cron second."""

from __future__ import annotations

import copy

from services.scheduler.specs import SpecCache
from tests.test_pipelines import WORD_COUNT


def test_each_version_is_parsed_once() -> None:
    specs = SpecCache()
    first = specs.parse("count", 1, WORD_COUNT)
    for _ in range(1000):
        assert specs.parse("count", 1, copy.deepcopy(WORD_COUNT)) is first
    assert specs.parses == 1
    updated = copy.deepcopy(WORD_COUNT)
    updated["transform"]["cmd"] = ["sh", "-c", "true"]
    assert specs.parse("count", 2, updated).transform.cmd == ("sh", "-c", "true")
    assert specs.parses == 2


def test_a_pipeline_made_again_under_its_name_gets_its_own_spec() -> None:
    specs = SpecCache()
    specs.parse("count", 1, WORD_COUNT)
    again = copy.deepcopy(WORD_COUNT)
    again["input"]["pfs"]["glob"] = "/"
    assert specs.parse("count", 1, again).input.glob == "/"  # type: ignore[union-attr]


def test_the_cache_is_bounded() -> None:
    specs = SpecCache(capacity=2)
    for version in (1, 2, 3):
        specs.parse("count", version, WORD_COUNT)
    specs.parse("count", 1, WORD_COUNT)
    assert specs.parses == 4  # version 1 was dropped as the least recently used
