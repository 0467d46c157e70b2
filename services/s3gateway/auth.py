"""Who signed a request. Authentication is off (as in Pachyderm with auth disabled): any
credentials are accepted, but SigV4 headers and presigned URLs are parsed, so signing
clients work unchanged and a verifier can later check ``Signature`` against a user's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    """What a request says about its signer (all None for an anonymous request)."""

    access_key: str | None = None
    scheme: str | None = None  # "AWS4-HMAC-SHA256" or "AWS" (SigV2)
    signed_headers: tuple[str, ...] = ()
    signature: str | None = None
    presigned: bool = False


def parse_signature(headers: Mapping[str, str], query: Mapping[str, str]) -> Signature:
    """Read the Authorization header or the presigned-URL query; lenient, never raises."""
    header = headers.get("authorization", "")
    if header.startswith("AWS4-HMAC-SHA256"):
        fields: dict[str, str] = {}
        for part in header[len("AWS4-HMAC-SHA256") :].split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value
        return Signature(
            access_key=fields.get("Credential", "").split("/", 1)[0] or None,
            scheme="AWS4-HMAC-SHA256",
            signed_headers=tuple(filter(None, fields.get("SignedHeaders", "").split(";"))),
            signature=fields.get("Signature"),
        )
    if header.startswith("AWS "):
        access_key, _, signature = header[4:].partition(":")
        return Signature(access_key=access_key or None, scheme="AWS", signature=signature)
    if "X-Amz-Signature" in query:
        return Signature(
            access_key=query.get("X-Amz-Credential", "").split("/", 1)[0] or None,
            scheme=query.get("X-Amz-Algorithm"),
            signed_headers=tuple(filter(None, query.get("X-Amz-SignedHeaders", "").split(";"))),
            signature=query.get("X-Amz-Signature"),
            presigned=True,
        )
    return Signature()


class AcceptAll:
    """The authorizer while Tusk has no users: every request may do everything."""

    def allow(self, signature: Signature, action: str, bucket: str | None) -> bool:
        del signature, action, bucket
        return True
