"""``put|get|list|glob|diff|delete|copy file``."""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

import click

from shared.api.names import normalize_path
from shared.platform.errors import InvalidArgument
from tusk.cli.args import REPO_ANY, REPO_FILE, Target, writable_branch
from tusk.cli.output import (
    echo,
    echo_json,
    format_fields,
    format_table,
    human_size,
    output_option,
)
from tusk.cli.progress import Progress
from tusk.cli.session import closing, run_pfs
from tusk.cli.sources import (
    STDIN,
    Upload,
    UploadStream,
    extract_archives,
    is_url,
    plan_tree,
    plan_uploads,
    read_source_list,
)

if TYPE_CHECKING:
    import aiohttp

    from shared.api.pfs_client import PfsClient
    from shared.api.pfs_models import FileChange, FileInfo, PutResult

# put file


@click.command("file")
@click.argument("target", metavar="REPO@BRANCH[:/PATH]", type=REPO_ANY)
@click.option(
    "-f",
    "--file",
    "sources",
    multiple=True,
    metavar="LOCAL|URL|-",
    help="A local file or directory, an http(s) URL, or - for stdin (repeatable; default: -).",
)
@click.option(
    "-i",
    "--input-file",
    "lists",
    multiple=True,
    metavar="LIST",
    help="A file naming one source (local path or http(s) URL) per line; - reads stdin.",
)
@click.option("-r", "--recursive", is_flag=True, help="Upload directories with all their files.")
@click.option("-a", "--append", is_flag=True, help="Append to existing files instead of replacing.")
@click.option(
    "--untar",
    is_flag=True,
    help="The sources are tar archives (gzip, bzip2, xz too): upload their files instead.",
)
def put_file(
    target: Target,
    sources: tuple[str, ...],
    lists: tuple[str, ...],
    recursive: bool,
    append: bool,
    untar: bool,
) -> None:
    """Upload files into a branch: all of them in one request and one commit.

    With no -f and no -i the file's bytes come from standard input (pachctl's habit).
    """
    branch = writable_branch(target, "put file")
    named = [*sources, *(s for path in lists for s in read_source_list(path))]
    if lists and not named:
        raise InvalidArgument(f"{', '.join(lists)} names no source")
    if untar:
        import tempfile  # imported where used: help pages and other commands start faster

        with tempfile.TemporaryDirectory(prefix="tusk-untar-") as unpacked:
            extract_archives(named or [STDIN], unpacked)
            plan = plan_tree(target, unpacked)
            _upload(target, branch, plan, append=append, urls=False)
        return
    plan = plan_uploads(target, named or [STDIN], recursive=recursive)
    _upload(target, branch, plan, append=append, urls=any(is_url(s) for s in named))


def _upload(target: Target, branch: str, plan: list[Upload], *, append: bool, urls: bool) -> None:
    known = [u.size for u in plan]
    total = None if None in known else sum(s or 0 for s in known)
    label = plan[0].dst if len(plan) == 1 else f"{len(plan)} files"

    async def upload(pfs: PfsClient) -> PutResult:
        with Progress(f"put {label}", total) as progress:
            async with _download_session(urls) as session:
                stream = UploadStream(plan, session=session, advance=progress.advance)
                try:
                    return await pfs.put_files(target.repo, branch, stream.files(), append=append)
                except Exception:
                    # A failing source surfaces as aiohttp's payload error; show the cause.
                    if stream.failure is not None:
                        raise stream.failure from None
                    raise

    run_pfs(upload)


@contextlib.asynccontextmanager
async def _download_session(needed: bool) -> AsyncIterator[aiohttp.ClientSession | None]:
    if not needed:
        yield None
        return
    import aiohttp  # loaded with the PFS client already; not at start-up

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=30)) as session:
        yield session


# get file


@click.command("file")
@click.argument("target", metavar="REPO@REF:/PATH", type=REPO_FILE)
@click.option(
    "-o",
    "--output",
    "local",
    default=None,
    metavar="LOCAL",
    help="Write here instead of stdout (a directory with -r).",
)
@click.option("-r", "--recursive", is_flag=True, help="Download a directory tree (needs -o DIR).")
def get_file(target: Target, local: str | None, recursive: bool) -> None:
    """Download a file (to stdout by default) or, with -r, a directory tree."""
    ref = target.ref_or_default
    path = target.path_or_root
    if recursive:
        if local is None:
            raise InvalidArgument("get file -r writes a directory tree: give it with -o DIR")
        root = local
        run_pfs(lambda pfs: download_tree(pfs, target.repo, ref, path, root))
    elif local is None:
        run_pfs(lambda pfs: download_file(pfs, target.repo, ref, path, sys.stdout.buffer))
    else:
        if os.path.isdir(local):
            local = os.path.join(local, posixpath.basename(path))
        destination = local
        run_pfs(lambda pfs: download_to_path(pfs, target.repo, ref, path, destination))


async def _total_size(pfs: PfsClient, repo: str, ref: str, path: str) -> int | None:
    """The size to show in a progress bar; only asked for when a bar is shown."""
    if not sys.stderr.isatty():
        return None
    return (await pfs.inspect_file(repo, ref, path)).size_bytes


async def download_file(pfs: PfsClient, repo: str, ref: str, path: str, out: BinaryIO) -> None:
    """Stream one file's bytes into ``out``."""
    total = await _total_size(pfs, repo, ref, path)
    with Progress(f"get {path}", total) as progress:
        async with closing(progress.count(pfs.get_file(repo, ref, path))) as blocks:
            async for block in blocks:
                out.write(block)
    out.flush()


async def download_to_path(pfs: PfsClient, repo: str, ref: str, path: str, local: str) -> None:
    """Write one file to the local path ``local`` atomically (a partial download never shows)."""
    import tempfile

    fd, partial = tempfile.mkstemp(prefix=".tusk-", dir=os.path.dirname(local) or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            await download_file(pfs, repo, ref, path, out)
        os.replace(partial, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def local_path_for(root: str, requested: str, path: str) -> str:
    """Where repo file ``path`` (found under ``requested``) goes below local ``root``."""
    if path == requested:
        relative = posixpath.basename(path)
    else:
        prefix = requested.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise InvalidArgument(f"server sent {path}, which is not under {requested}")
        relative = path[len(prefix) :]
    # normalize_path refuses '..' and empty segments, so nothing escapes ``root``.
    relative = normalize_path(relative).lstrip("/")
    return os.path.join(root, *relative.split("/"))


async def download_tree(pfs: PfsClient, repo: str, ref: str, path: str, root: str) -> int:
    """Write every file under ``path`` below the local directory ``root``; return the count."""
    total = await _total_size(pfs, repo, ref, path)
    count = 0
    os.makedirs(root, exist_ok=True)
    with Progress(f"get {path}", total) as progress:
        async with closing(pfs.get_files(repo, ref, path)) as files:
            async for file_path, blocks in files:
                local = local_path_for(root, path, file_path)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as out:  # noqa: ASYNC230 - short writes of received blocks
                    async for block in progress.count(blocks):
                        out.write(block)
                count += 1
    return count


# list / glob / diff


def _display_path(info: FileInfo) -> str:
    return info.path + "/" if info.type == "dir" and info.path != "/" else info.path


def file_table(files: Sequence[FileInfo]) -> str:
    """NAME TYPE SIZE; directories end in '/'."""
    rows = [(_display_path(f), f.type, human_size(f.size_bytes)) for f in files]
    return format_table(("NAME", "TYPE", "SIZE"), rows)


def print_files(files: Sequence[FileInfo], output: str) -> None:
    if output == "json":
        echo_json([f.to_json() for f in files])
    else:
        echo(file_table(files))


async def collect_files(
    pfs: PfsClient, repo: str, ref: str, path: str, limit: int | None
) -> list[FileInfo]:
    """A directory's children across all pages, stopping at ``limit``."""
    page = min(limit, 1000) if limit else 1000
    found: list[FileInfo] = []
    async with closing(pfs.iter_files(repo, ref, path, page=page)) as files:
        async for info in files:
            found.append(info)
            if limit is not None and len(found) >= limit:
                break
    return found


@click.command("file")
@click.argument("target", metavar="REPO@REF[:/DIR]", type=REPO_ANY)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Show at most N.")
@output_option
def list_file(target: Target, limit: int | None, output: str) -> None:
    """List a directory's files and subdirectories (the root by default)."""
    ref = target.ref_or_default
    files = run_pfs(lambda pfs: collect_files(pfs, target.repo, ref, target.path_or_root, limit))
    print_files(files, output)


@click.command("file")
@click.argument("target", metavar="REPO@REF:/PATH", type=REPO_FILE)
@output_option
def inspect_file(target: Target, output: str) -> None:
    """Show one file or directory: type, size, content hash."""
    ref = target.ref_or_default
    info = run_pfs(lambda pfs: pfs.inspect_file(target.repo, ref, target.path_or_root))
    if output == "json":
        echo_json(info.to_json())
        return
    fields = [
        ("Path", _display_path(info)),
        ("Type", info.type),
        ("Size", human_size(info.size_bytes)),
        ("Files", str(info.file_count)),
        ("Hash", info.hash or "-"),
        ("Commit", info.commit or "-"),
    ]
    echo(format_fields(fields))


@click.command("file")
@click.argument("target", metavar="REPO@REF:/PATTERN", type=REPO_FILE)
@output_option
def glob_file(target: Target, output: str) -> None:
    """List the files and directories matching a glob pattern (quote it for the shell)."""
    ref = target.ref_or_default
    files = run_pfs(lambda pfs: pfs.glob_files(target.repo, ref, target.path_or_root))
    print_files(files, output)


def change_size(change: FileChange) -> str:
    if change.old is not None and change.new is not None:
        return f"{human_size(change.old.size_bytes)} -> {human_size(change.new.size_bytes)}"
    info = change.new or change.old
    return human_size(info.size_bytes) if info is not None else "-"


def diff_table(changes: Sequence[FileChange]) -> str:
    """CHANGE PATH SIZE, one line per changed path."""
    rows = [(c.change, c.path, change_size(c)) for c in changes]
    return format_table(("CHANGE", "PATH", "SIZE"), rows)


@click.command("file")
@click.argument("new", metavar="REPO@REF[:/PATH]", type=REPO_ANY)
@click.argument("old", metavar="[REPO@REF[:/PATH]]", type=REPO_ANY, required=False)
@output_option
def diff_file(new: Target, old: Target | None, output: str) -> None:
    """Show what changed between two commits (by default: from the first one's parent)."""
    ref = new.ref_or_default

    async def diff(pfs: PfsClient) -> list[FileChange]:
        if old is None:
            return await pfs.diff_files(new.repo, ref, new.path_or_root)
        return await pfs.diff_files(
            new.repo,
            ref,
            new.path_or_root,
            old_repo=old.repo,
            old_ref=old.ref_or_default,
            old_path=old.path,
        )

    changes = run_pfs(diff)
    if output == "json":
        echo_json([c.to_json() for c in changes])
        return
    echo(diff_table(changes))


# delete / copy


@click.command("file")
@click.argument("target", metavar="REPO@BRANCH:/PATH", type=REPO_FILE)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Accepted as pachctl's habit: a directory is always deleted with everything under it.",
)
def delete_file(target: Target, recursive: bool) -> None:
    """Delete a file or a whole directory from a branch (in a new commit)."""
    branch = writable_branch(target, "delete file")
    run_pfs(lambda pfs: pfs.delete_file(target.repo, branch, target.path_or_root))


@click.command("file")
@click.argument("src", metavar="REPO@REF:/SRC", type=REPO_FILE)
@click.argument("dst", metavar="REPO@BRANCH:/DST", type=REPO_FILE)
@click.option("-a", "--append", is_flag=True, help="Append instead of replacing.")
def copy_file(src: Target, dst: Target, append: bool) -> None:
    """Copy a file or directory without moving its bytes (chunks are shared)."""
    branch = writable_branch(dst, "copy file")
    run_pfs(
        lambda pfs: pfs.copy_file(
            src.repo,
            src.ref_or_default,
            src.path_or_root,
            dst.repo,
            branch,
            dst.path_or_root,
            append=append,
        )
    )


COMMANDS: list[tuple[str, click.Command]] = [
    ("put", put_file),
    ("get", get_file),
    ("list", list_file),
    ("inspect", inspect_file),
    ("glob", glob_file),
    ("diff", diff_file),
    ("delete", delete_file),
    ("copy", copy_file),
]
