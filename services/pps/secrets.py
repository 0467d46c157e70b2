"""PPS's secrets: stored sealed, listed by name and key, opened only for workers.

PPS owns the ``pps_secrets`` table. Values go in sealed (``SecretBox``) and come out
only through ``data`` (the workers' internal endpoint); every other answer is a
``SecretInfo`` (name, type, keys, times). Nothing here logs a value or emits an event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.pps.secret_box import SecretBox
from shared.api.pps_models import SecretInfo
from shared.api.secrets import SecretManifest, check_secret_name
from shared.pipeline.spec import SecretUse
from shared.platform.db import Conn, Pool, Row
from shared.platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


def _info(rec: Row) -> SecretInfo:
    return SecretInfo(
        name=rec["name"],
        type=rec["type"],
        keys=list(rec["keys"]),
        created=rec["created"].isoformat(),
        updated=rec["updated"].isoformat(),
    )


def _not_found(name: str) -> NotFound:
    return NotFound(f"secret {name} not found (tusk list secret shows them)")


class SecretService:
    def __init__(self, pool: Pool, box: SecretBox) -> None:
        self.pool = pool
        self.box = box

    async def create(self, manifest: SecretManifest, *, update: bool) -> SecretInfo:
        """Store a secret; ``update`` replaces an existing one (and only an existing one)."""
        sealed = self.box.seal(manifest.name, manifest.data)
        values = (manifest.name, manifest.type, manifest.keys, self.box.key_id, sealed)
        async with self.pool.acquire() as conn:
            rec = await (self._replace(conn, values) if update else self._insert(conn, values))
        return _info(rec)

    async def _insert(self, conn: Conn, values: tuple[object, ...]) -> Row:
        rec = await conn.fetchrow(
            "INSERT INTO pps_secrets (name, type, keys, key_id, sealed) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (name) DO NOTHING RETURNING *",
            *values,
        )
        if rec is None:
            raise AlreadyExists(
                f"secret {values[0]} already exists; tusk update secret replaces it"
            )
        return rec

    async def _replace(self, conn: Conn, values: tuple[object, ...]) -> Row:
        rec = await conn.fetchrow(
            "UPDATE pps_secrets SET type = $2, keys = $3, key_id = $4, sealed = $5, updated = now()"
            " WHERE name = $1 RETURNING *",
            *values,
        )
        if rec is None:
            raise NotFound(f"secret {values[0]} not found; tusk create secret makes it")
        return rec

    async def list(self) -> list[SecretInfo]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM pps_secrets ORDER BY name")
        return [_info(r) for r in rows]

    async def inspect(self, name: str) -> SecretInfo:
        async with self.pool.acquire() as conn:
            rec = await conn.fetchrow("SELECT * FROM pps_secrets WHERE name = $1", name)
        if rec is None:
            raise _not_found(name)
        return _info(rec)

    async def delete(self, name: str) -> None:
        """Delete a secret no pipeline uses (their workers would fail to start without it)."""
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT 1 FROM pps_secrets WHERE name = $1 FOR UPDATE", name
            )
            if found is None:
                raise _not_found(name)
            users = await conn.fetch(
                "SELECT name FROM pps_pipelines WHERE spec->'transform'->'secrets' @> $1::jsonb"
                " ORDER BY name",
                json.dumps([{"name": name}]),
            )
            if users:
                pipelines = ", ".join(r["name"] for r in users)
                raise FailedPrecondition(
                    f"secret {name} is used by pipeline {pipelines}; "
                    "update or delete the pipeline first"
                )
            await conn.execute("DELETE FROM pps_secrets WHERE name = $1", name)

    async def data(self, name: str) -> dict[str, bytes]:
        """The secret's values, for a worker about to run a datum."""
        check_secret_name(name)
        async with self.pool.acquire() as conn:
            rec = await conn.fetchrow(
                "SELECT key_id, sealed FROM pps_secrets WHERE name = $1", name
            )
        if rec is None:
            raise _not_found(name)
        return self.box.open(name, rec["key_id"], rec["sealed"])

    async def check_uses(self, conn: Conn, uses: Sequence[SecretUse], *, lock: bool) -> None:
        """Every secret a transform names exists and has the keys it reads; with ``lock`` the
        rows stay share-locked until the caller's transaction ends, so none is deleted
        before the pipeline that needs it is stored."""
        if not uses:
            return
        names = sorted({use.name for use in uses})
        rows = await conn.fetch(
            "SELECT name, keys FROM pps_secrets WHERE name = ANY($1::text[]) ORDER BY name"
            + (" FOR SHARE" if lock else ""),
            names,
        )
        keys = {r["name"]: set(r["keys"]) for r in rows}
        for i, use in enumerate(uses):
            field = f"transform.secrets[{i}]"
            if use.name not in keys:
                raise InvalidArgument(
                    f"pipeline spec: {field}.name: secret {use.name} not found "
                    f"(tusk create secret -f FILE makes it)",
                    field=f"{field}.name",
                )
            if use.key is not None and use.key not in keys[use.name]:
                have = ", ".join(sorted(keys[use.name]))
                raise InvalidArgument(
                    f"pipeline spec: {field}.key: secret {use.name} has no key {use.key!r} "
                    f"(it has {have})",
                    field=f"{field}.key",
                )
