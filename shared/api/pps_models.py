"""PPS records shared by the PPS service, the scheduler, the client SDK and the CLI.

State names and counters are Pachyderm's (``JOB_SUCCESS``, ``data_processed``,
``data_skipped`` …) so Pachyderm users read them at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.platform.records import Record, from_dict

PIPELINE_RUNNING = "PIPELINE_RUNNING"
PIPELINE_PAUSED = "PIPELINE_PAUSED"
PIPELINE_FAILURE = "PIPELINE_FAILURE"
# Running, but its workers fail to start or keep dying (the reason names the pod's state).
PIPELINE_CRASHING = "PIPELINE_CRASHING"
PIPELINE_ACTIVE = (PIPELINE_RUNNING, PIPELINE_CRASHING)

JOB_CREATED = "JOB_CREATED"
JOB_STARTING = "JOB_STARTING"
JOB_RUNNING = "JOB_RUNNING"
JOB_FINISHING = "JOB_FINISHING"
JOB_SUCCESS = "JOB_SUCCESS"
JOB_FAILURE = "JOB_FAILURE"
JOB_KILLED = "JOB_KILLED"
JOB_UNRUNNABLE = "JOB_UNRUNNABLE"
JOB_ACTIVE = (JOB_CREATED, JOB_STARTING, JOB_RUNNING, JOB_FINISHING)
JOB_DONE = (JOB_SUCCESS, JOB_FAILURE, JOB_KILLED, JOB_UNRUNNABLE)

DATUM_STARTING = "STARTING"
DATUM_SUCCESS = "SUCCESS"
DATUM_FAILED = "FAILED"
DATUM_RECOVERED = "RECOVERED"
DATUM_SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class InputCommit(Record):
    """One input commit of a job: the input's name and the commit it read."""

    name: str
    repo: str
    branch: str
    id: str


@dataclass(frozen=True)
class PipelineInfo(Record):
    name: str
    version: int
    state: str
    spec: dict[str, Any]
    created: str
    updated: str
    reason: str | None = None
    last_job_state: str | None = None


@dataclass(frozen=True)
class JobRequest(Record):
    """A job PPS asks the scheduler (the jobs' owner) for when a pipeline changes.

    ``trigger`` names it: one job per trigger, so asking twice (the direct call and the
    ``pipeline.updated`` event that backs it up) makes one. ``reprocess`` runs every datum
    again; with ``unless_read`` no job is made if the pipeline's newest job reads the same
    input commits (a pipeline started again whose inputs did not move).
    """

    trigger: str
    reprocess: bool = False
    unless_read: bool = False


@dataclass(frozen=True)
class JobInfo(Record):
    id: str
    pipeline: str
    pipeline_version: int
    state: str
    created: str
    trigger: str = ""
    reason: str | None = None
    input_commits: list[InputCommit] = field(default_factory=list)
    output_commit: str | None = None
    data_total: int = 0
    data_processed: int = 0
    data_skipped: int = 0
    data_failed: int = 0
    data_recovered: int = 0
    started: str | None = None
    finished: str | None = None

    @property
    def done(self) -> bool:
        return self.state in JOB_DONE

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobInfo:
        values = dict(data)
        values["input_commits"] = [
            InputCommit.from_json(c) for c in data.get("input_commits") or []
        ]
        return from_dict(cls, values)


@dataclass(frozen=True)
class DatumInfo(Record):
    id: str
    job_id: str
    state: str
    hash: str
    # [{input, repo, commit, match, files: [path, …]}]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    output_files: int = 0
    output_bytes: int = 0
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None
    started: str | None = None
    finished: str | None = None


@dataclass(frozen=True)
class LogLine(Record):
    pipeline: str
    job_id: str
    datum_id: str | None
    ts: str
    message: str
    id: int = 0


@dataclass(frozen=True)
class SecretInfo(Record):
    """What PPS tells about a secret (``tusk list secret``): never its values."""

    name: str
    type: str
    keys: list[str]
    created: str
    updated: str = ""
