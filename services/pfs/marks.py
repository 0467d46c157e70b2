"""The collector's marks of live chunks, bounded in memory by spilling sorted runs to disk.

Chunks are marked during the walk and looked up once, during the sweep, which lists
``chunks/`` in key order (``chunks/ab/<hex>`` sorts as the digest does). So marks need
not stay in memory: at most ``limit`` digests are held; a full buffer is sorted and
written to a run file (32 bytes a digest); the sweep merges the runs and the buffer into
one ascending stream and walks it beside the listing — a merge join in O(runs) memory.
Memory: ``limit`` digests (~75 bytes each in a Python list) plus one read buffer per run.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.platform.errors import Internal

DIGEST = 32
READ_BUFFER = 1 << 20
RUN_DIR_PREFIX = "tusk-gc-marks-"


def remove_stale_runs(spill_dir: str | None) -> int:
    """Remove run directories left by collections that were killed; how many. Call it
    only while holding the cluster's collection lock: no other run is writing one."""
    parent = Path(spill_dir or tempfile.gettempdir())
    removed = 0
    for stale in parent.glob(f"{RUN_DIR_PREFIX}*"):
        if stale.is_dir():
            for run in stale.iterdir():
                run.unlink(missing_ok=True)
            stale.rmdir()
            removed += 1
    return removed


class ChunkMarks:
    """Live chunk digests: up to ``limit`` in memory, the rest in sorted runs under a
    private directory of ``spill_dir`` (removed by ``close``)."""

    def __init__(self, limit: int, spill_dir: str | None = None) -> None:
        if limit < 1:
            raise ValueError("a mark buffer holds at least one digest")
        self.limit = limit
        self._spill_parent = spill_dir or None
        self._dir: Path | None = None
        self._buffer: set[bytes] = set()
        self._runs: list[Path] = []
        self.peak_held = 0  # the most digests ever held in memory at once
        self.spilled = 0  # digests written to runs (a digest may be in several runs)
        self.runs = 0  # run files written (``close`` removes them, not this count)

    @property
    def held(self) -> int:
        return len(self._buffer)

    @property
    def full(self) -> bool:
        """Whether the buffer reached its bound: the caller awaits ``spill`` next."""
        return len(self._buffer) >= self.limit

    def add(self, digest: bytes) -> None:
        self._buffer.add(digest)
        if len(self._buffer) > self.peak_held:
            self.peak_held = len(self._buffer)

    async def spill(self) -> None:
        """Write the buffer as a sorted run, off the event loop (sorting millions of
        digests takes seconds), and start an empty one."""
        if not self._buffer:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=self._spill_parent))
        buffer, self._buffer = self._buffer, set()
        path = self._dir / f"run-{len(self._runs):06d}"
        await asyncio.to_thread(_write_run, path, buffer)
        self._runs.append(path)
        self.runs += 1
        self.spilled += len(buffer)

    def ascending(self) -> Iterator[bytes]:
        """Every marked digest once, in ascending order."""
        streams = [_read_run(path) for path in self._runs]
        streams.append(iter(sorted(self._buffer)))
        last: bytes | None = None
        for digest in heapq.merge(*streams):
            if digest != last:
                yield digest
                last = digest

    def cursor(self) -> MarkCursor:
        return MarkCursor(self.ascending())

    def close(self) -> None:
        """Remove the run files (a killed process leaves them in the temp directory)."""
        for path in self._runs:
            path.unlink(missing_ok=True)
        if self._dir is not None:
            os.rmdir(self._dir)
        self._runs, self._dir, self._buffer = [], None, set()


class MarkCursor:
    """Membership for digests asked in ascending order (the sweep's listing order)."""

    def __init__(self, marks: Iterator[bytes]) -> None:
        self._marks = marks
        self._current = next(marks, None)
        self._last: bytes | None = None
        self._seen = 0 if self._current is None else 1

    def _advance(self) -> None:
        self._current = next(self._marks, None)
        if self._current is not None:
            self._seen += 1

    def finish(self) -> int:
        """How many distinct digests were marked (reads the rest of the stream)."""
        while self._current is not None:
            self._advance()
        return self._seen

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes):
            return False
        if self._last is not None and digest < self._last:
            # Judged by a merge join, an unsorted listing would delete live chunks.
            raise Internal(
                f"the object store listed chunk {digest.hex()} after {self._last.hex()}: "
                "not in key order, so the collection stops here"
            )
        self._last = digest
        while self._current is not None and self._current < digest:
            self._advance()
        return self._current == digest


def _write_run(path: Path, digests: set[bytes]) -> None:
    with path.open("wb") as out:
        out.write(b"".join(sorted(digests)))


def _read_run(path: Path) -> Iterator[bytes]:
    with path.open("rb", buffering=READ_BUFFER) as run:
        while block := run.read(READ_BUFFER - READ_BUFFER % DIGEST):
            for start in range(0, len(block), DIGEST):
                yield block[start : start + DIGEST]
