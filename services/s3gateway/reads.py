"""What a GET or HEAD of an object answers, decided before any byte is read: the byte range
(``Range``) and the conditional headers (``If-Match``, ``If-None-Match``,
``If-Modified-Since``, ``If-Unmodified-Since``). Pure, with RFC 9110's precedence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from services.s3gateway.errors import S3Error


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks of an object of ``size`` bytes; None for the whole.

    A header that is not one ``bytes=`` range is ignored (S3 serves the whole object); a
    range wholly past the end is ``InvalidRange``.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise _invalid_range(size)
            return ByteRange(max(0, size - suffix), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size:
        raise _invalid_range(size)
    if start < 0 or end <= start:
        return None
    return ByteRange(start, min(end, size))


def _invalid_range(size: int) -> S3Error:
    return S3Error(
        416, "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=size
    )


class NotModified(Exception):
    """The client's copy is current: answer 304 with no body."""


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # an unreadable date is ignored, as HTTP says


def _etags(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in value.split(",")]


def check_conditions(headers: Mapping[str, str], etag: str, modified: datetime) -> None:
    """Raise ``PreconditionFailed`` (412) or ``NotModified`` (304) as the headers ask."""
    # Compared to the second: HTTP dates have no finer resolution.
    modified = modified.replace(microsecond=0)
    if_match = headers.get("if-match")
    if if_match is not None:
        if "*" not in if_match and etag not in _etags(if_match):
            raise _precondition("If-Match")
    else:
        since = _date(headers.get("if-unmodified-since"))
        if since is not None and modified > since:
            raise _precondition("If-Unmodified-Since")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if "*" in if_none_match or etag in _etags(if_none_match):
            raise NotModified()
    else:
        since = _date(headers.get("if-modified-since"))
        if since is not None and modified <= since:
            raise NotModified()


def _precondition(header: str) -> S3Error:
    return S3Error(
        412,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        Condition=header,
    )
