"""Progress bars for long transfers: on stderr, and only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """A byte counter shown as a tqdm bar when a person is watching, silent otherwise."""

    def __init__(
        self, label: str, total: int | None = None, *, enabled: bool | None = None
    ) -> None:
        show = sys.stderr.isatty() if enabled is None else enabled
        self.bytes = 0
        self._bar: tqdm | None = None
        if show:
            from tqdm import tqdm  # ~60 ms to import: only when a bar is shown

            self._bar = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )

    @property
    def visible(self) -> bool:
        return self._bar is not None

    def advance(self, n: int) -> None:
        self.bytes += n
        if self._bar is not None:
            self._bar.update(n)

    async def count(self, blocks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Pass blocks through, counting them."""
        async for block in blocks:
            self.advance(len(block))
            yield block

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
