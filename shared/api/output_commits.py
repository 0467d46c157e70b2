"""How a pipeline's output commit names the job that made it: its description.

The scheduler writes it when it opens the commit; ``inspect commit ID`` and ``wait commit
ID`` read it back to name a commit set's jobs without asking for every job of a pipeline.
"""

from __future__ import annotations

import re

from shared.api.pfs_models import CommitInfo

_JOB_RE = re.compile(r"job ([0-9a-f]{32})")


def output_description(job_id: str) -> str:
    """The description of the output commit job ``job_id`` opens."""
    return f"job {job_id}"


def job_of(commit: CommitInfo) -> str | None:
    """The id of the job that made ``commit``, if a job made it."""
    found = _JOB_RE.fullmatch(commit.description)
    return found.group(1) if found else None
