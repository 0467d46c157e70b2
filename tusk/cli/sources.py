"""What ``put file`` uploads: local files, directory trees, stdin and URLs as async byte streams.

``plan_uploads`` is pure (it only looks at the local file system): it decides
each source's destination path by pachctl's rules. ``open_uploads`` turns a plan
into the ``(path, blocks)`` stream ``PfsClient.put_files`` sends in one request.
Files are read in 1 MiB blocks and opened one at a time, so neither a huge file
nor 100,000 small ones are ever held in memory at once.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import sys
import tarfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal
from urllib.parse import unquote, urlsplit

import aiohttp

from shared.api.names import normalize_path
from shared.platform.errors import InvalidArgument, TuskError, Unavailable
from tusk.cli.args import Target

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


def _walk_files(root: str) -> list[tuple[str, str]]:
    """(relative posix path, local path) of every regular file under ``root``, sorted."""
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            local = os.path.join(dirpath, name)
            if os.path.isfile(local):
                rel = os.path.relpath(local, root).replace(os.sep, "/")
                found.append((rel, local))
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
        return [
            Upload(_join(base, rel), "file", local, os.path.getsize(local)) for rel, local in files
        ]
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
    return [Upload(_join(base, rel), "file", local, os.path.getsize(local)) for rel, local in files]


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
    while block := await asyncio.to_thread(stream.read, BLOCK_SIZE):
        yield block


async def read_url_blocks(session: aiohttp.ClientSession, url: str) -> AsyncIterator[bytes]:
    """Download ``url`` in blocks; HTTP errors become one clear ``TuskError``."""
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
    count: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None
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
        blocks = self._blocks(upload)
        if self.count is not None:
            blocks = self.count(blocks)
        try:
            async for block in blocks:
                yield block
        except TuskError as exc:
            self.failure = self.failure or exc
            raise

    async def files(self) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """The stream handed to ``PfsClient.put_files``."""
        for upload in self.plan:
            yield upload.dst, self._guarded(upload)
