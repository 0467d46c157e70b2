"""The image cache under ``$TUSK_HOME/images``, shared by every pipeline:

- ``blobs/sha256/<hex>``: manifests, configs and layers, each stored once by digest and
  only after its digest was checked;
- ``layers/<hex>/``: each layer unpacked once per digest (``files/<n>``: its regular
  files; ``entries.json``: every member in tar order), shared by every image holding it;
- ``roots/<hex>``: one root per image (``hex`` of its manifest digest), its layers'
  entries applied bottom first with regular files hard-linked from ``layers/`` (a file
  is on disk once however many images hold its layer); built in a scratch directory and
  renamed into place, so a root that exists is whole;
- ``records/<hex>.json``: what the image is (references, config and layer digests, sizes)
  and when it was last used — the order least-recently-used eviction follows.

Writers (the scheduler pulling, ``tusk image load``) take ``lock`` with ``flock``; a
root in use by a pipeline is never evicted (the caller names what it keeps).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.images.layers import Entry, _writable_tree, apply_entries, unpack_layer
from shared.images.manifests import (
    ImageConfig,
    Manifest,
    check_digest,
    parse_config,
    parse_manifest,
)
from shared.platform.errors import InvalidArgument, NotFound

# Directories every root has, so bubblewrap can mount over them in a read-only root.
MOUNT_POINTS = ("dev", "etc", "pfs", "proc", "tmp")


@dataclass
class ImageRecord:
    """One cached image."""

    digest: str  # of its manifest
    config: str
    layers: list[str]
    references: list[str] = field(default_factory=list)
    blob_bytes: int = 0
    root_bytes: int = 0
    last_used: float = 0.0
    created: float = 0.0

    @property
    def size(self) -> int:
        return self.blob_bytes + self.root_bytes


@dataclass(frozen=True, slots=True)
class Image:
    """A cached image ready to run: its root and what its config says."""

    record: ImageRecord
    root: Path
    config: ImageConfig


class ImageStore:
    def __init__(self, directory: Path, limit_bytes: int | None = None) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        for sub in ("blobs/sha256", "layers", "roots", "records", "scratch"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    # Blobs

    def blob_path(self, digest: str) -> Path:
        return self.directory / "blobs" / "sha256" / check_digest(digest).removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def scratch_file(self) -> Path:
        """A fresh path in the cache's file system, for a blob being written."""
        handle, name = tempfile.mkstemp(dir=self.directory / "scratch")
        os.close(handle)
        os.unlink(name)
        return Path(name)

    def put_blob_file(self, path: Path, digest: str) -> None:
        """Move a checked blob file into place (the caller verified ``digest``)."""
        os.replace(path, self.blob_path(digest))

    def put_blob_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            scratch = self.scratch_file()
            scratch.write_bytes(data)
            self.put_blob_file(scratch, digest)
        return digest

    # Images

    def add_image(self, manifest_digest: str, references: Iterable[str]) -> Image:
        """Record the image whose manifest and blobs are stored, building its root once."""
        manifest = parse_manifest(self.blob_path(manifest_digest).read_bytes(), None)
        if not isinstance(manifest, Manifest):
            raise InvalidArgument(f"{manifest_digest} is a manifest list, not an image")
        with self.lock():
            record = self._read(manifest_digest) or ImageRecord(
                manifest_digest, manifest.config.digest, [d.digest for d in manifest.layers],
                created=time.time(),
            )  # fmt: skip
            root = self.root_path(manifest_digest)
            if not root.is_dir():
                record.root_bytes = self._build_root(manifest, root)
            record.blob_bytes = sum(
                self.blob_path(d).stat().st_size
                for d in (manifest_digest, record.config, *record.layers)
            )
            # Newest name first: a tag moved to another image leaves the older one.
            for other in self.records():
                if other.digest != manifest_digest and set(other.references) & set(references):
                    other.references = [r for r in other.references if r not in references]
                    self._write(other)
            record.references = sorted({*record.references, *references})
            record.last_used = time.time()
            self._write(record)
        return self.image(manifest_digest)

    def image(self, digest: str) -> Image:
        """The cached image with manifest ``digest``."""
        record = self._read(digest)
        root = self.root_path(digest)
        if record is None or not root.is_dir():
            raise NotFound(f"image {digest} is not in the cache")
        return Image(record, root, parse_config(self.blob_path(record.config).read_bytes()))

    def find(self, reference: str) -> ImageRecord | None:
        """The cached image a reference (as ``parse_reference`` prints it) names."""
        for record in self.records():
            if reference in record.references:
                return record
        return None

    def records(self) -> list[ImageRecord]:
        found = []
        for path in sorted((self.directory / "records").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(ImageRecord(**json.loads(path.read_text())))
        return found

    def touch(self, digest: str) -> None:
        with self.lock():
            record = self._read(digest)
            if record is not None:
                record.last_used = time.time()
                self._write(record)

    def root_path(self, digest: str) -> Path:
        return self.directory / "roots" / check_digest(digest).removeprefix("sha256:")

    def total_bytes(self) -> int:
        return sum(record.size for record in self.records())

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove least-recently-used images until the cache fits its limit; images in
        ``keep`` (manifest digests in use) stay. Returns the digests removed."""
        if self.limit_bytes is None:
            return []
        kept = set(keep)
        removed: list[str] = []
        with self.lock():
            records = sorted(self.records(), key=lambda r: r.last_used)
            total = sum(r.size for r in records)
            for record in records:
                if total <= self.limit_bytes:
                    break
                if record.digest in kept:
                    continue
                self._remove(record, [r for r in records if r.digest != record.digest
                                      and r.digest not in removed])  # fmt: skip
                removed.append(record.digest)
                total -= record.size
        return removed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with open(self.directory / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove(self, record: ImageRecord, others: list[ImageRecord]) -> None:
        shared = {d for r in others for d in (r.digest, r.config, *r.layers)}
        (self.directory / "records" / f"{_hex(record.digest)}.json").unlink(missing_ok=True)
        root = self.root_path(record.digest)
        if root.exists():
            _writable_tree(root)
            shutil.rmtree(root, ignore_errors=True)
        for digest in (record.digest, record.config, *record.layers):
            if digest not in shared:
                self.blob_path(digest).unlink(missing_ok=True)
                shutil.rmtree(self._layer_dir(digest), ignore_errors=True)

    def _build_root(self, manifest: Manifest, root: Path) -> int:
        scratch = Path(tempfile.mkdtemp(dir=self.directory / "scratch", prefix="root-"))
        try:
            size = 0
            for layer in manifest.layers:
                entries = self.unpacked(layer.digest)
                size += apply_entries(
                    entries, self._layer_dir(layer.digest) / "files", scratch
                ).bytes
            for name in MOUNT_POINTS:
                point = scratch / name
                if not point.is_dir() and not point.is_symlink():
                    point.unlink(missing_ok=True)
                    point.mkdir(mode=0o755)
            scratch.chmod(0o755)
            os.rename(scratch, root)
        except BaseException:
            _writable_tree(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return size

    def _layer_dir(self, digest: str) -> Path:
        return self.directory / "layers" / _hex(digest)

    def unpacked(self, digest: str) -> list[Entry]:
        """The stored layer's entries, unpacking it first if nobody did yet. Safe without
        ``lock`` (a pull unpacks its layers in parallel, each as soon as it arrives): each
        unpacks into scratch and renames; the loser of a race drops its copy."""
        directory = self._layer_dir(digest)
        if not (directory / "entries.json").is_file():
            scratch = Path(tempfile.mkdtemp(dir=self.directory / "scratch", prefix="layer-"))
            try:
                with open(self.blob_path(digest), "rb") as stream:
                    entries = unpack_layer(stream, scratch / "files")
                (scratch / "entries.json").write_text(json.dumps([asdict(e) for e in entries]))
                with contextlib.suppress(FileExistsError, OSError):
                    os.rename(scratch, directory)
                    return entries
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return [Entry(**e) for e in json.loads((directory / "entries.json").read_text())]

    def _read(self, digest: str) -> ImageRecord | None:
        path = self.directory / "records" / f"{_hex(digest)}.json"
        try:
            return ImageRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def _write(self, record: ImageRecord) -> None:
        path = self.directory / "records" / f"{_hex(record.digest)}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(record), indent=1))
        os.replace(scratch, path)


def _hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")
