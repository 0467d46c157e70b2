"""Bucket names: ``BRANCH.REPO`` (read-write) and ``COMMIT.BRANCH.REPO`` (read-only), as
Pachyderm names them. Pure: names in, ``Bucket`` out, ``NoSuchBucket`` for anything else."""

from __future__ import annotations

from dataclasses import dataclass

from services.s3gateway.errors import S3Error
from shared.api.names import COMMIT_ID_RE, NAME_RE


@dataclass(frozen=True)
class Bucket:
    """A branch (``commit`` None: reads see its newest finished commit) or one commit of it."""

    repo: str
    branch: str
    commit: str | None = None

    @property
    def name(self) -> str:
        return ".".join(p for p in (self.commit, self.branch, self.repo) if p)

    @property
    def ref(self) -> str:
        """What PFS reads: the commit, else the branch."""
        return self.commit or self.branch

    @property
    def writable(self) -> bool:
        return self.commit is None


def parse_bucket(name: str) -> Bucket:
    """The bucket ``name`` stands for; ``NoSuchBucket`` if it is not one of ours."""
    parts = name.split(".")
    if len(parts) == 2 and all(NAME_RE.match(p) for p in parts):
        return Bucket(repo=parts[1], branch=parts[0])
    if (
        len(parts) == 3
        and COMMIT_ID_RE.match(parts[0])
        and NAME_RE.match(parts[1])
        and NAME_RE.match(parts[2])
    ):
        return Bucket(repo=parts[2], branch=parts[1], commit=parts[0])
    raise S3Error.no_such_bucket(name)
