"""Where datum workers run. The engine says what should run; a backend makes it so.

``local`` runs sandboxed worker subprocesses on this machine; ``kubernetes`` runs a
worker Deployment per pipeline. The scheduler's logic is the same for both: it
only calls ``reconcile`` with the pipelines that should have workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.pipeline.spec import PipelineSpec


@dataclass(frozen=True)
class WorkerSet:
    """The workers one running pipeline should have: ``spec.parallelism`` of them."""

    pipeline: str
    version: int
    spec: PipelineSpec


class WorkerBackend(Protocol):
    async def reconcile(self, desired: Mapping[str, WorkerSet]) -> None:
        """Make the running workers match ``desired`` (pipelines absent here get none)."""

    async def close(self) -> None:
        """Stop every worker this backend started."""

    def status(self) -> list[dict[str, Any]]:
        """One entry per pipeline: desired and running workers, and problems seen."""
