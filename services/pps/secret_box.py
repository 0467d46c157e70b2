"""Sealing secret values for the database: AES-256-GCM under a key kept in a 0600 file.

A database dump alone does not reveal a secret: PPS stores each secret's values sealed,
and the key lives in a file on the PPS host (config ``secrets_key_file``, by default
``$TUSK_HOME/pps-secrets.key``), never in the database. Each sealed blob is bound to its
secret's name (GCM associated data), so blobs swapped between rows fail to open instead
of handing one secret's values out under another's name.

The key file is made on first use (not at start: a PPS that never stores a secret never
writes it), atomically, so two PPS processes starting together agree on one key. Several
PPS replicas must share the file (mount the same Kubernetes Secret).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.api.secrets import decode_values, encode_values
from shared.platform.config import Config, tusk_home
from shared.platform.errors import FailedPrecondition, Internal

log = logging.getLogger("tusk.pps.secrets")

KEY_BYTES = 32
NONCE_BYTES = 12
DEFAULT_KEY_FILE = "pps-secrets.key"


def key_file_path(config: Config) -> Path:
    """Where the sealing key is: ``secrets_key_file``, else under ``$TUSK_HOME``."""
    configured = config.secrets_key_file
    return Path(configured).expanduser() if configured else tusk_home() / DEFAULT_KEY_FILE


class SecretBox:
    """Seals and opens secrets' values with the key in ``key_file`` (read or made lazily)."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._aead: AESGCM | None = None
        self._key_id = ""

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key, stored beside each sealed blob."""
        self._cipher()
        return self._key_id

    def seal(self, name: str, data: Mapping[str, bytes]) -> bytes:
        """``nonce || AES-GCM(JSON of the base64 values)``, bound to ``name``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        plain = json.dumps(encode_values(data)).encode()
        return nonce + self._cipher().encrypt(nonce, plain, name.encode())

    def open(self, name: str, key_id: str, sealed: bytes) -> dict[str, bytes]:
        """The values ``seal`` sealed for ``name``; ``Internal`` if the key does not fit."""
        cipher = self._cipher()
        if key_id != self._key_id:
            raise Internal(
                f"secret {name} was sealed with key {key_id}, but {self.key_file} holds key "
                f"{self._key_id}; restore that key file or create the secret again"
            )
        try:
            plain = cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
        except InvalidTag:
            raise Internal(
                f"secret {name} does not open with key {key_id}: it was altered"
            ) from None
        return decode_values(json.loads(plain))

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            key = _read_key(self.key_file) if self.key_file.exists() else _make_key(self.key_file)
            self._aead = AESGCM(key)
            self._key_id = blake3.blake3(key).hexdigest()[:16]
        return self._aead


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the secrets key file {path}: {exc}") from None
    if mode & 0o077:
        log.warning("secrets key file %s is readable by others (mode %o); chmod 600 it", path, mode)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise FailedPrecondition(
            f"the secrets key file {path} does not hold a key ({KEY_BYTES} bytes, base64)"
        )
    return key


def _make_key(path: Path) -> bytes:
    """Write a new random key to ``path`` (0600) unless another process just did; the key."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        _write_once(path, base64.b64encode(key).decode() + "\n")
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot create the secrets key file {path}: {exc.strerror}; set secrets_key_file "
            "(TUSK_SECRETS_KEY_FILE) to a writable path"
        ) from None
    log.info("made a new secrets key in %s", path)
    return key


def _write_once(path: Path, text: str) -> None:
    """Create ``path`` (mode 0600) holding ``text``, whole and synced, or raise
    ``FileExistsError`` if it exists: link() of a finished temp file is the atomic step."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    finally:
        temp.unlink()
