"""S3's error codes at the gateway's edge: ``S3Error`` for refusals S3 names itself, and one
table from Tusk's error tree to (status, code) for everything PFS or the store raises.

A client's mistake is never a 500: only ``Internal`` (a bug, lost bytes) becomes
``InternalError``.
"""

from __future__ import annotations

from typing import Any

from shared.platform.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MisdirectedRequest,
    NotFound,
    PermissionDenied,
    TooLarge,
    TuskError,
    Unavailable,
    UnsupportedMediaType,
)


class S3Error(TuskError):
    """A refusal with S3's own code and status (``NoSuchKey``, ``InvalidRange``, …)."""

    code = "s3"

    def __init__(self, status: int, s3_code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.s3_code = s3_code

    @classmethod
    def no_such_bucket(cls, bucket: str) -> S3Error:
        return cls(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)

    @classmethod
    def no_such_key(cls, key: str) -> S3Error:
        return cls(404, "NoSuchKey", "The specified key does not exist.", Key=key)

    @classmethod
    def no_such_upload(cls, upload_id: str) -> S3Error:
        return cls(
            404,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            UploadId=upload_id,
        )

    @classmethod
    def invalid_argument(cls, message: str) -> S3Error:
        return cls(400, "InvalidArgument", message)

    @classmethod
    def read_only(cls, bucket: str) -> S3Error:
        return cls(
            403,
            "AccessDenied",
            f"bucket {bucket} is a commit, and commits are immutable; write to the branch "
            "bucket (BRANCH.REPO) instead",
            BucketName=bucket,
        )


# Most specific first: the first class in an error's MRO found here wins.
S3_CODE_BY_ERROR: dict[type[TuskError], tuple[int, str]] = {
    UnsupportedMediaType: (400, "InvalidArgument"),
    InvalidArgument: (400, "InvalidArgument"),
    MisdirectedRequest: (421, "MisdirectedRequest"),
    PermissionDenied: (403, "AccessDenied"),
    NotFound: (404, "NoSuchKey"),
    AlreadyExists: (409, "BucketAlreadyOwnedByYou"),
    Conflict: (409, "OperationAborted"),
    FailedPrecondition: (409, "OperationAborted"),
    TooLarge: (400, "EntityTooLarge"),
    Unavailable: (503, "ServiceUnavailable"),
    Internal: (500, "InternalError"),
}


def s3_status_and_code(error: TuskError) -> tuple[int, str]:
    if isinstance(error, S3Error):
        return error.status, error.s3_code
    for cls in type(error).__mro__:
        found = S3_CODE_BY_ERROR.get(cls)
        if found is not None:
            return found
    return 500, "InternalError"
