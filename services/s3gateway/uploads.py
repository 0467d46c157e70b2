"""Multipart uploads in progress — the only state the gateway owns.

Kept as small JSON records under the object-store prefix ``s3gateway/uploads/<id>/``
(``upload.json``, then ``part-NNNNN.json`` per part), next to the chunks the parts' bytes
went into. A part is only its chunk list: completing an upload joins the lists (no byte is
copied) and lands the file in PFS by reference; aborting deletes the records.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from services.s3gateway.errors import S3Error
from shared.platform.errors import NotFound
from shared.storage.chunking import FileEntry
from shared.storage.objstore import ObjectStore

PREFIX = "s3gateway/uploads/"
MAX_PART_NUMBER = 10000


@dataclass(frozen=True)
class Upload:
    id: str
    bucket: str
    key: str
    started: datetime


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    modified: datetime
    entry: FileEntry

    @property
    def size(self) -> int:
        return self.entry.size


def check_part_number(text: str | None) -> int:
    try:
        number = int(text or "")
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise S3Error.invalid_argument(
            f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
        )
    return number


class Uploads:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def create(self, bucket: str, key: str) -> Upload:
        upload = Upload(secrets.token_hex(16), bucket, key, datetime.now(UTC))
        record = {"bucket": bucket, "key": key, "started": upload.started.isoformat()}
        await self.store.put(f"{PREFIX}{upload.id}/upload.json", json.dumps(record).encode())
        return upload

    async def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        """The upload, which must be for ``bucket``/``key``; ``NoSuchUpload`` otherwise."""
        if not upload_id.isalnum() or len(upload_id) > 64:
            raise S3Error.no_such_upload(upload_id)
        try:
            record = json.loads(await self.store.get(f"{PREFIX}{upload_id}/upload.json"))
        except NotFound:
            raise S3Error.no_such_upload(upload_id) from None
        upload = Upload(
            upload_id, record["bucket"], record["key"], datetime.fromisoformat(record["started"])
        )
        if upload.bucket != bucket or upload.key != key:
            raise S3Error.no_such_upload(upload_id)
        return upload

    async def put_part(self, upload: Upload, number: int, etag: str, entry: FileEntry) -> Part:
        part = Part(number, etag, datetime.now(UTC), entry)
        record = {"etag": etag, "modified": part.modified.isoformat(), "entry": entry.to_json()}
        await self.store.put(_part_key(upload.id, number), json.dumps(record).encode())
        return part

    async def parts(self, upload: Upload) -> list[Part]:
        """The upload's parts in part-number order (a re-sent part replaced the old one)."""
        parts = []
        async for key in self.store.list(f"{PREFIX}{upload.id}/part-"):
            try:
                record = json.loads(await self.store.get(key))
            except NotFound:
                continue  # aborted meanwhile
            number = int(key.rsplit("-", 1)[1].removesuffix(".json"))
            parts.append(
                Part(
                    number,
                    record["etag"],
                    datetime.fromisoformat(record["modified"]),
                    FileEntry.from_json(record["entry"]),
                )
            )
        return sorted(parts, key=lambda p: p.number)

    async def remove(self, upload: Upload) -> None:
        """Forget the upload: parts first, its record last, so a crash leaves it listable."""
        keys = [key async for key in self.store.list(f"{PREFIX}{upload.id}/")]
        for key in sorted(keys, key=lambda k: k.endswith("upload.json")):
            await self.store.delete(key)

    async def in_bucket(self, bucket: str) -> AsyncIterator[Upload]:
        async for key in self.store.list(PREFIX):
            if not key.endswith("/upload.json"):
                continue
            upload_id = key[len(PREFIX) :].split("/", 1)[0]
            try:
                record = json.loads(await self.store.get(key))
            except NotFound:
                continue
            if record["bucket"] == bucket:
                yield Upload(
                    upload_id, bucket, record["key"], datetime.fromisoformat(record["started"])
                )


def _part_key(upload_id: str, number: int) -> str:
    return f"{PREFIX}{upload_id}/part-{number:05d}.json"
