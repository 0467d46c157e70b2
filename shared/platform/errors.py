"""The one error hierarchy of Tusk.

Every error a user can cause or meet is a ``TuskError`` with a message written
for that user: what was wrong and, where it helps, how to fix it. The HTTP layer
maps the tree to statuses in one table (``shared.platform.http``); the CLI prints the
message as one line. Errors of lower libraries (asyncpg, botocore, nats) are
translated into this tree at the adapter that calls them and never leak past it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TuskError(Exception):
    """Base of every error Tusk raises on purpose. ``code`` names the kind on the wire."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidArgument(TuskError):
    """Raised when a request is malformed: a bad name, path, ref syntax, spec field or body."""

    code = "invalid_argument"


class NotFound(TuskError):
    """Raised when a named repo, branch, commit, file, pipeline or job does not exist."""

    code = "not_found"


class AlreadyExists(TuskError):
    """Raised when creating something whose name is taken."""

    code = "already_exists"


class Conflict(TuskError):
    """Raised when a concurrent change won a race the caller may retry (e.g. a branch head moved)."""

    code = "conflict"


class UnsupportedMediaType(InvalidArgument):
    """Raised when a request body's Content-Type is not one the endpoint declares."""

    code = "unsupported_media_type"


class PermissionDenied(TuskError):
    """Raised when a request is refused for where it comes from (e.g. a foreign web page's Origin)."""

    code = "permission_denied"


class MisdirectedRequest(PermissionDenied):
    """Raised when a request names a Host this service does not answer to (DNS rebinding)."""

    code = "misdirected_request"


class FailedPrecondition(TuskError):
    """Raised when the system is not in a state that allows the operation (e.g. finishing a finished commit)."""

    code = "failed_precondition"


class TooLarge(TuskError):
    """Raised when a request exceeds a configured size limit."""

    code = "too_large"


class Unavailable(TuskError):
    """Raised when a dependency (database, bus, object store, another service) cannot be reached."""

    code = "unavailable"


class Internal(TuskError):
    """Raised for a bug or an unexpected state; the message says what was being done."""

    code = "internal"


class DataLoss(Internal):
    """Raised when stored bytes are gone or corrupt (a chunk missing from the object store):
    the data exists in the metadata but cannot be read back, and retrying cannot help."""

    code = "data_loss"


# File-system refinements (mountd maps each to its errno; over HTTP they are their base).


class NotADirectory(InvalidArgument):
    """Raised when a path is used as a directory but is a file (ENOTDIR)."""


class IsADirectory(InvalidArgument):
    """Raised when a file operation is asked of a directory (EISDIR)."""


class NotEmpty(FailedPrecondition):
    """Raised when a directory that must be empty is not (ENOTEMPTY)."""


class ReadOnly(FailedPrecondition):
    """Raised when a write is asked of something read-only, such as a read-only mount (EROFS)."""


ERRORS_BY_CODE: dict[str, type[TuskError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        UnsupportedMediaType,
        NotFound,
        AlreadyExists,
        Conflict,
        PermissionDenied,
        MisdirectedRequest,
        FailedPrecondition,
        TooLarge,
        Unavailable,
        Internal,
        DataLoss,
    )
}


def error_from_json(body: dict[str, Any]) -> TuskError:
    """Rebuild the error a service sent (the inverse of ``TuskError.to_json``)."""
    cls = ERRORS_BY_CODE.get(str(body.get("code")), Internal)
    return cls(str(body.get("message", "unknown error")), **(body.get("details") or {}))
