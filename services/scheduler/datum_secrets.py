"""A transform's ``secrets`` for one datum: variables and read-only files, never logged.

A task only names secrets (``SecretUse``: name, key, env_var, mount_path). Just before
the datum runs, the worker fetches each named secret's data from PPS
(``fetch_secrets`` over ``PpsClient.secret_data``), and the datum runner exposes it:

- ``env_var`` + ``key``: the variable ``env_var`` holds that key's value (UTF-8 text;
  a binary value must be mounted instead);
- ``mount_path``: every key of the secret (only ``key`` when one is given) as a file
  ``<mount_path>/<key>``, written mode 0400 into a 0700 directory of the datum's
  scratch space and bound read-only at ``mount_path``; removed with the scratch space.

Values never reach logs or results: every error names the secret and key only, and
``mask`` replaces a value the command printed with ``[secret]`` in the datum's logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from shared.api.names import normalize_path
from shared.pipeline.spec import SecretUse
from shared.platform.errors import InvalidArgument

SecretValues = Mapping[str, Mapping[str, bytes]]
"""Secret name → its data (key → value), as fetched for one datum."""

MASK = "[secret]"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Lines of a multi-line value shorter than this are left in the logs: masking every
# "}" or "---" would hide the command's own output, and reveals nothing.
_MIN_MASKED_LINE = 4


class SecretSource(Protocol):
    """Where a worker gets secret data (``shared.api.pps_client.PpsClient``)."""

    async def secret_data(self, name: str) -> dict[str, bytes]: ...


async def fetch_secrets(
    source: SecretSource, uses: Iterable[SecretUse]
) -> dict[str, dict[str, bytes]]:
    """The data of every secret ``uses`` names, each fetched once."""
    return {name: await source.secret_data(name) for name in sorted({use.name for use in uses})}


def _data(values: SecretValues, use: SecretUse) -> Mapping[str, bytes]:
    found = values.get(use.name)
    if found is None:
        raise InvalidArgument(f"secret {use.name!r} was not fetched for this datum")
    return found


def _value(values: SecretValues, use: SecretUse, key: str) -> bytes:
    found = _data(values, use).get(key)
    if found is None:
        raise InvalidArgument(f"secret {use.name!r} has no key {key!r}")
    return found


def secret_env(uses: Sequence[SecretUse], values: SecretValues) -> dict[str, str]:
    """The variables the ``env_var`` uses set."""
    env: dict[str, str] = {}
    for use in uses:
        if use.env_var is None:
            continue
        if not _ENV_NAME.fullmatch(use.env_var):
            raise InvalidArgument(
                f"secret {use.name!r}: {use.env_var!r} is not a valid variable name"
            )
        if use.key is None:
            raise InvalidArgument(f"secret {use.name!r}: env_var {use.env_var!r} needs a key")
        raw = _value(values, use, use.key)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise InvalidArgument(
                f"secret {use.name!r}: key {use.key!r} is not text, so it cannot be the "
                f"variable {use.env_var}; mount it as a file (mount_path) instead"
            )
        env[use.env_var] = text
    return env


def _mount_target(use: SecretUse, taken: set[str]) -> str:
    assert use.mount_path is not None
    try:
        target = normalize_path(use.mount_path)
    except InvalidArgument as exc:
        raise InvalidArgument(f"secret {use.name!r}: mount_path: {exc.message}") from None
    if not use.mount_path.startswith("/") or target == "/":
        raise InvalidArgument(
            f"secret {use.name!r}: mount_path {use.mount_path!r} must be an absolute "
            "directory other than /"
        )
    if target == "/pfs" or target.startswith("/pfs/"):
        raise InvalidArgument(
            f"secret {use.name!r}: mount_path {target} is under /pfs, which holds the "
            "datum's inputs and output"
        )
    if target in taken:
        raise InvalidArgument(f"secret {use.name!r}: mount_path {target} is used twice")
    taken.add(target)
    return target


def _file_name(use: SecretUse, key: str) -> str:
    if not key or key in (".", "..") or "/" in key or "\0" in key:
        raise InvalidArgument(f"secret {use.name!r}: key {key!r} cannot be a file name")
    return key


def write_secret_mounts(
    uses: Sequence[SecretUse], values: SecretValues, directory: Path
) -> tuple[tuple[Path, str], ...]:
    """Write the ``mount_path`` uses' files under ``directory`` (made 0700); return the
    (host directory, sandbox path) pairs to bind read-only."""
    mounts: list[tuple[Path, str]] = []
    taken: set[str] = set()
    for number, use in enumerate(u for u in uses if u.mount_path is not None):
        target = _mount_target(use, taken)
        keys = [use.key] if use.key is not None else sorted(_data(values, use))
        folder = directory / str(number)
        folder.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)
        for key in keys:
            _write_private(folder / _file_name(use, key), _value(values, use, key))
        mounts.append((folder, target))
    return tuple(mounts)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0400 from the start: there is no moment when the file is readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def used_values(uses: Sequence[SecretUse], values: SecretValues) -> list[bytes]:
    """Every value the datum is given, for ``mask``."""
    found: list[bytes] = []
    for use in uses:
        data = values.get(use.name, {})
        keys = [use.key] if use.key is not None else sorted(data)
        found.extend(data[key] for key in keys if key in data)
    return found


def mask(text: str, secrets: Iterable[bytes]) -> str:
    """``text`` with every secret value (and every line of a multi-line value) that
    appears in it replaced by ``[secret]``; longest first, so no part of one is left."""
    needles: set[str] = set()
    for raw in secrets:
        value = raw.decode(errors="replace").strip()
        if value:
            needles.add(value)
        needles.update(
            line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_MASKED_LINE
        )
    for needle in sorted(needles, key=len, reverse=True):
        text = text.replace(needle, MASK)
    return text


__all__ = [
    "MASK",
    "SecretSource",
    "SecretValues",
    "fetch_secrets",
    "mask",
    "secret_env",
    "used_values",
    "write_secret_mounts",
]
