"""Parsed pipeline specs, each parsed once.

A spec version never changes once recorded, so the parse of (pipeline, version) is kept.
The raw spec is compared as well: a pipeline deleted and made again under the same name
starts again at version 1 with another spec, and must not get the old one's parse.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from shared.pipeline.spec import PipelineSpec, parse_pipeline_spec

# Far more than the pipelines of one deployment; bounds memory if names churn.
MAX_SPECS = 4096


class SpecCache:
    """(pipeline, version) → its parsed spec, least recently used dropped first.

    ``parses`` counts the parses done (misses): with ``len()``, what the scheduler's
    ``GET /v1/status`` shows of this cache.
    """

    def __init__(self, capacity: int = MAX_SPECS) -> None:
        self._capacity = capacity
        self._specs: OrderedDict[tuple[str, int], tuple[dict[str, Any], PipelineSpec]] = (
            OrderedDict()
        )
        self.parses = 0

    def __len__(self) -> int:
        return len(self._specs)

    def parse(self, pipeline: str, version: int, raw: dict[str, Any]) -> PipelineSpec:
        key = (pipeline, version)
        cached = self._specs.get(key)
        if cached is not None and cached[0] == raw:
            self._specs.move_to_end(key)
            return cached[1]
        spec = parse_pipeline_spec(raw)
        self.parses += 1
        self._specs[key] = (raw, spec)
        self._specs.move_to_end(key)
        while len(self._specs) > self._capacity:
            self._specs.popitem(last=False)
        return spec
