"""Secrets: Kubernetes Secret manifests read and checked, and the record the API returns.

``tusk create secret -f FILE`` takes the manifest ``kubectl`` and ``pachctl`` take::

    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
     "data": {"password": "<base64>"}, "stringData": {"user": "alice"}}

Pure: no I/O. A value never appears in an error message, a ``repr`` or a record; only
names and keys do. PPS stores the values sealed (``services/pps/secret_box.py``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.platform.documents import load_documents
from shared.platform.errors import InvalidArgument, TooLarge

# Kubernetes' rules, so a manifest that works with kubectl works here and the other way round.
_NAME_RE = re.compile(r"^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$")
_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_NAME_CHARS = 253
# Kubernetes allows 1 MiB per secret; half that keeps the base64 form within one JSON body.
MAX_SECRET_BYTES = 512 << 10
DEFAULT_TYPE = "Opaque"
_MANIFEST_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"}
)


def check_secret_name(name: str) -> str:
    """``name`` if it is a valid secret name (a DNS subdomain, as in Kubernetes), else raise."""
    if len(name) > MAX_NAME_CHARS or not _NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid secret name {name!r}: use lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {MAX_NAME_CHARS} characters"
        )
    return name


def check_secret_key(key: str) -> str:
    """``key`` if it is a valid key of a secret's data, else raise."""
    if len(key) > MAX_NAME_CHARS or not _KEY_RE.match(key) or key in (".", ".."):
        raise InvalidArgument(
            f"invalid secret key {key!r}: use letters, digits, '-', '_' and '.', "
            f"at most {MAX_NAME_CHARS} characters"
        )
    return key


@dataclass(frozen=True)
class SecretManifest:
    """A checked secret: its name, type and values (left out of ``repr``)."""

    name: str
    type: str
    data: Mapping[str, bytes] = field(repr=False)

    @property
    def keys(self) -> list[str]:
        return sorted(self.data)


def load_secret_document(text: str) -> dict[str, Any]:
    """The one manifest object in a JSON or YAML file's text (not yet checked)."""
    docs = load_documents(text, "secret")
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InvalidArgument("secret: expected the file to hold one Kubernetes Secret object")
    return dict(docs[0])


def load_secret_manifest(text: str) -> SecretManifest:
    """The one secret in a JSON or YAML file's text, checked."""
    return parse_secret_manifest(load_secret_document(text))


def parse_secret_manifest(doc: Any) -> SecretManifest:
    """Check a Kubernetes Secret manifest (``data`` base64, ``stringData`` plain text,
    which wins for a key given in both, as in Kubernetes)."""
    if not isinstance(doc, dict):
        raise InvalidArgument("secret: expected a Kubernetes Secret object")
    unknown = sorted(str(k) for k in doc if k not in _MANIFEST_FIELDS)
    if unknown:
        raise InvalidArgument(f"secret: unknown field {unknown[0]!r}")
    if doc.get("kind") != "Secret" or doc.get("apiVersion") != "v1":
        raise InvalidArgument("secret: expected 'apiVersion: v1' and 'kind: Secret'")
    name = check_secret_name(_metadata_name(doc.get("metadata")))
    kind = doc.get("type") or DEFAULT_TYPE
    if not isinstance(kind, str):
        raise InvalidArgument("secret: type: expected a string, e.g. 'Opaque'")
    data = {
        **_values(doc, "data", _from_base64, "not valid base64 (use 'stringData' for plain text)"),
        **_values(doc, "stringData", str.encode, "not valid Unicode text"),
    }
    if not data:
        raise InvalidArgument(f"secret {name}: no data; give 'data' or 'stringData'")
    size = sum(len(k) + len(v) for k, v in data.items())
    if size > MAX_SECRET_BYTES:
        raise TooLarge(f"secret {name}: {size} bytes of data, over the limit of 512 KiB")
    return SecretManifest(name, kind, data)


def _metadata_name(metadata: Any) -> str:
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise InvalidArgument("secret: metadata.name: required")
    return str(metadata["name"])


def _values(
    doc: dict[str, Any], field_name: str, decode: Callable[[str], bytes], invalid: str
) -> dict[str, bytes]:
    values = doc.get(field_name)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidArgument(f"secret: {field_name}: expected an object of strings")
    out: dict[str, bytes] = {}
    for key, value in values.items():
        try:
            check_secret_key(str(key))
        except InvalidArgument as exc:
            raise InvalidArgument(f"secret: {field_name}: {exc.message}") from None
        if not isinstance(value, str):
            # The value itself is never echoed back: it may be the secret.
            raise InvalidArgument(f"secret: {field_name}.{key}: expected a string")
        try:
            out[str(key)] = decode(value)
        except ValueError:  # binascii.Error and UnicodeEncodeError are ones
            raise InvalidArgument(f"secret: {field_name}.{key}: {invalid}") from None
    return out


def _from_base64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def encode_values(data: Mapping[str, bytes]) -> dict[str, str]:
    """Values as base64 text, for JSON."""
    return {key: base64.b64encode(value).decode() for key, value in sorted(data.items())}


def decode_values(data: Mapping[str, str]) -> dict[str, bytes]:
    """The inverse of ``encode_values``."""
    return {key: base64.b64decode(value) for key, value in data.items()}
