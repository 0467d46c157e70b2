"""What ``put file`` uploads: local files, directory trees, stdin and URLs as async byte streams.

``plan_uploads`` is pure (it only looks at the local file system): it decides
each source's destination path by pachctl's rules. ``UploadStream`` turns a plan
into the ``(path, content)`` stream ``PfsClient.put_files`` sends in one request.
Files are opened one at a time: a file of at most 1 MiB is read in one call and
handed over as bytes, a bigger one in 1 MiB blocks, so neither a huge file nor
100,000 small ones are ever held in memory at once.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

from shared.api.names import normalize_path
from shared.platform.errors import InvalidArgument, TuskError, Unavailable
from tusk.cli.args import Target

if TYPE_CHECKING:
    import aiohttp

    from shared.api.filestream import Content

BLOCK_SIZE = 1 << 20
STDIN = "-"

SourceKind = Literal["file", "stdin", "url"]


@dataclass(frozen=True)
class Upload:
    """One file to upload: where it lands in the repo and where its bytes come from."""

    dst: str
    kind: SourceKind
    location: str
    # Known for local files (drives the progress bar); None for stdin and URLs.
    size: int | None = None


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _join(base: str, *parts: str) -> str:
    return normalize_path(posixpath.join(base, *parts))


def _local_name(source: str) -> str:
    return os.path.basename(os.path.abspath(source))


def _url_name(url: str) -> str:
    return posixpath.basename(unquote(urlsplit(url).path))


def _walk_files(root: str) -> list[tuple[str, str, int]]:
    """(relative posix path, local path, size) of every regular file under ``root``, sorted.

    One ``scandir`` pass: each entry's type comes with the listing and its size from one
    ``stat``, where ``os.walk`` + ``isfile`` + ``getsize`` + ``relpath`` cost ~4x the
    calls per file. As ``os.walk`` does, a symlink to a file is followed and a symlink
    to a directory is not descended into.
    """
    found: list[tuple[str, str, int]] = []
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((prefix + entry.name + "/", entry.path))
                elif entry.is_file():
                    found.append((prefix + entry.name, entry.path, entry.stat().st_size))
    found.sort()
    return found


def plan_uploads(target: Target, sources: Sequence[str], *, recursive: bool) -> list[Upload]:
    """Destinations for ``put file TARGET -f SOURCE…``, by pachctl's rules.

    - one source and ``:/path`` → exactly ``/path``;
    - no path → the source's own name at the root (``/data.csv``);
    - ``:/dir/`` (trailing slash) or several sources → ``/dir/<source name>``;
    - ``-r DIR`` → ``/path/<relative path>`` (``/<DIR name>/<relative>`` without a path);
    - ``-f -`` (stdin) needs an explicit file path.
    """
    if not sources:
        raise InvalidArgument("put file needs at least one source: -f LOCAL|URL|-")
    if STDIN in sources and len(sources) > 1:
        raise InvalidArgument("-f - (stdin) cannot be combined with other sources")
    as_dir = target.into_dir or len(sources) > 1
    plan: list[Upload] = []
    for source in sources:
        plan.extend(_plan_one(target, source, recursive=recursive, as_dir=as_dir))
    seen: set[str] = set()
    for upload in plan:
        if upload.dst in seen:
            raise InvalidArgument(f"two sources would both write {upload.dst}")
        seen.add(upload.dst)
    return plan


def _plan_one(target: Target, source: str, *, recursive: bool, as_dir: bool) -> list[Upload]:
    path = target.path
    if source == STDIN:
        if path is None or target.into_dir:
            raise InvalidArgument(
                f"put file -f - (stdin) needs a file path: {target.repo}@BRANCH:/path/to/file"
            )
        return [Upload(path, "stdin", STDIN)]
    if is_url(source):
        if path is not None and not as_dir:
            return [Upload(path, "url", source)]
        name = _url_name(source)
        if not name:
            raise InvalidArgument(
                f"{source} has no file name: give one as {target.repo}@BRANCH:/path"
            )
        return [Upload(_join(path or "/", name), "url", source)]
    if os.path.isdir(source):
        if not recursive:
            raise InvalidArgument(f"{source} is a directory: use -r to upload its files")
        base = path if path is not None else _join("/", _local_name(source))
        files = _walk_files(source)
        if not files:
            raise InvalidArgument(f"{source} has no files to upload")
        return [Upload(_join(base, rel), "file", local, size) for rel, local, size in files]
    if not os.path.exists(source):
        raise InvalidArgument(f"{source}: no such file or directory")
    if not os.path.isfile(source):
        raise InvalidArgument(f"{source}: not a regular file")
    keep = path is not None and not as_dir
    dst = path if keep and path is not None else _join(path or "/", _local_name(source))
    if dst == "/":
        raise InvalidArgument(f"cannot put {source} at '/': give a file path")
    return [Upload(dst, "file", source, os.path.getsize(source))]


def read_source_list(path: str) -> list[str]:
    """``put file -i LIST``: one source per line (blank lines and ``#`` comments skipped)."""
    try:
        if path == STDIN:
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    found = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            if entry == STDIN:
                raise InvalidArgument(f"{path}: '-' (stdin) cannot be listed as a source")
            found.append(entry)
    return found


def extract_archives(sources: Sequence[str], dest: str) -> None:
    """``put file --untar``: unpack each tar (local file or stdin) below ``dest``.

    Only regular files and directories are taken; tarfile's ``data`` filter refuses
    absolute names and ``..``, so nothing lands outside ``dest``. A URL is refused
    (download it first): a half-fetched archive must not become half a commit.
    """
    import tarfile  # with its compressors, only --untar needs it

    for source in sources:
        if is_url(source):
            raise InvalidArgument(f"put file --untar reads local archives or stdin, not {source}")
        try:
            # Stdin is a stream ("r|*": no seeking); a local file may be read in any order.
            archive = (
                tarfile.open(fileobj=sys.stdin.buffer, mode="r|*")  # noqa: SIM115 - closed below
                if source == STDIN
                else tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed below
            )
            with archive:
                for member in archive:
                    if member.isreg() or member.isdir():
                        archive.extract(member, dest, filter="data")
        except tarfile.TarError as exc:
            name = "stdin" if source == STDIN else source
            raise InvalidArgument(f"{name} is not a readable tar archive: {exc}") from None
        except OSError as exc:
            raise InvalidArgument(f"{source}: {exc.strerror or exc}") from None


def plan_tree(target: Target, root: str) -> list[Upload]:
    """Every file under ``root`` at ``TARGET:/path/<relative path>`` (the root by default)."""
    files = _walk_files(root)
    if not files:
        raise InvalidArgument("the archive holds no files")
    base = target.path_or_root
    return [Upload(_join(base, rel), "file", local, size) for rel, local, size in files]


async def read_file_blocks(path: str) -> AsyncIterator[bytes]:
    """A local file in 1 MiB blocks (regular files do not block the loop for long)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115, ASYNC230 - closed below; reads are short
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    with handle:
        while block := handle.read(BLOCK_SIZE):
            yield block


async def read_stream_blocks(stream: BinaryIO) -> AsyncIterator[bytes]:
    """A pipe or terminal in 1 MiB blocks, read off the event loop (it may block for long)."""
    import asyncio  # running already; kept out of the CLI's start-up

    while block := await asyncio.to_thread(stream.read, BLOCK_SIZE):
        yield block


async def read_url_blocks(session: aiohttp.ClientSession, url: str) -> AsyncIterator[bytes]:
    """Download ``url`` in blocks; HTTP errors become one clear ``TuskError``."""
    import aiohttp  # loaded already by the session's owner; not at start-up

    try:
        async with session.get(url) as resp:
            if resp.status >= 400:
                raise InvalidArgument(f"cannot download {url}: HTTP {resp.status} {resp.reason}")
            async for block in resp.content.iter_chunked(BLOCK_SIZE):
                yield block
    except aiohttp.ClientError as exc:
        raise Unavailable(f"cannot download {url}: {exc.__class__.__name__}: {exc}") from None


@dataclass
class UploadStream:
    """The ``(path, blocks)`` pairs of a plan, remembering the first source that failed.

    aiohttp reports an exception raised inside a request body as its own
    payload error; ``failure`` keeps the real cause so the user sees it.
    """

    plan: Sequence[Upload]
    session: aiohttp.ClientSession | None = None
    # Told the size of every block or small file sent (a progress bar).
    advance: Callable[[int], None] | None = None
    failure: TuskError | None = field(default=None, init=False)

    def _blocks(self, upload: Upload) -> AsyncIterator[bytes]:
        if upload.kind == "stdin":
            return read_stream_blocks(sys.stdin.buffer)
        if upload.kind == "url":
            if self.session is None:
                raise AssertionError("a URL upload needs an HTTP session")
            return read_url_blocks(self.session, upload.location)
        return read_file_blocks(upload.location)

    async def _guarded(self, upload: Upload) -> AsyncIterator[bytes]:
        try:
            async for block in self._blocks(upload):
                if self.advance is not None:
                    self.advance(len(block))
                yield block
        except TuskError as exc:
            self.failure = self.failure or exc
            raise

    def _read_small(self, upload: Upload, size: int) -> bytes | None:
        """A small local file's bytes; None if it grew past ``BLOCK_SIZE`` since planned.

        ``os.read`` of the planned size + 1: a buffered ``read(BLOCK_SIZE + 1)`` allocates
        1 MiB per call, ~7x the time of the whole read of a 1 KiB file.
        """
        try:
            fd = os.open(upload.location, os.O_RDONLY)
            try:
                data = os.read(fd, size + 1)
                while len(data) <= size and (more := os.read(fd, size + 1 - len(data))):
                    data += more  # a short read (some network file systems)
            finally:
                os.close(fd)
        except OSError as exc:
            self.failure = self.failure or InvalidArgument(f"{upload.location}: {exc.strerror}")
            raise self.failure from None
        return None if len(data) > size else data  # grown: stream it from the start

    async def files(self) -> AsyncIterator[tuple[str, Content]]:
        """The stream handed to ``PfsClient.put_files``.

        A local file of at most ``BLOCK_SIZE`` goes as its bytes: for 10,000 small files
        that saves a generator, an open-and-iterate and a wrapper per file (most of the
        CLI's per-file time); page-cached reads are short enough for the event loop.
        """
        for upload in self.plan:
            size = upload.size
            if upload.kind == "file" and size is not None and size <= BLOCK_SIZE:
                data = self._read_small(upload, size)
                if data is not None:
                    if self.advance is not None:
                        self.advance(len(data))
                    yield upload.dst, data
                    continue
            yield upload.dst, self._guarded(upload)
