"""Directory listings served to ``readdir`` in pieces, holding at most one page in memory.

The kernel reads a directory in many ``readdir`` calls, each resuming at the
``next_id`` of the last entry it accepted. A ``DirListing`` numbers the entries of
an async stream (which pages through PFS) and keeps only the entries it has pulled
but the kernel has not accepted yet, so a 1,000,000-entry directory is listed with
a bounded window. Seeking backwards (``rewinddir``) restarts the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")


class DirListing(Generic[T]):
    """Entries ``(name, value)`` of a stream, addressed by position (0-based)."""

    # Entries returned per ``batch`` call at most (a readdirplus reply holds ~25).
    BATCH = 128

    def __init__(
        self, open_stream: Callable[[], AsyncIterator[tuple[str, T]]], *, window: int = 1000
    ) -> None:
        self._open_stream = open_stream
        self._window = window
        self._stream: AsyncIterator[tuple[str, T]] | None = None
        # Entries pulled from the stream and not yet accepted: positions _start, _start + 1, …
        self._buffer: deque[tuple[str, T]] = deque()
        self._start = 0
        self._done = False
        self.restarts = 0

    async def _restart(self) -> None:
        await self.aclose()
        self._stream = self._open_stream()
        self._buffer.clear()
        self._start = 0
        self._done = False
        self.restarts += 1

    async def _fill(self) -> None:
        assert self._stream is not None
        while len(self._buffer) < self._window:
            try:
                self._buffer.append(await anext(self._stream))
            except StopAsyncIteration:
                self._done = True
                return

    async def batch(self, position: int) -> list[tuple[int, str, T]]:
        """Entries from ``position`` on, as (position, name, value); empty at the end.

        Entries before ``position`` count as accepted and leave the window.
        """
        if self._stream is None or position < self._start:
            await self._restart()
        while True:
            while self._buffer and self._start < position:
                self._buffer.popleft()
                self._start += 1
            if self._buffer:
                # A few dozen entries fit one kernel reply: hand out a slice, not the whole
                # window (building all of it per call made a directory's listing quadratic).
                return [
                    (self._start + i, name, value)
                    for i, (name, value) in enumerate(islice(self._buffer, self.BATCH))
                ]
            if self._done:
                return []
            await self._fill()

    async def aclose(self) -> None:
        """Release the underlying stream."""
        stream, self._stream = self._stream, None
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
