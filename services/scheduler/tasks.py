"""Datum tasks and results: the records the scheduler sends to a worker and gets back.

A ``DatumTask`` carries everything a worker needs to run one datum without asking
anyone: the file entries of the datum's input files (so the worker reads chunks
straight from the object store), the transform, and the ids Pachyderm exposes to
the command as environment variables. A ``DatumResult`` reports the outcome and,
on success, the file-index root of the datum's ``/pfs/out``.

Both travel as JSON (``to_json`` / ``from_json``); ``from_json`` refuses a malformed
record with ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

from shared.chunking import FileEntry
from shared.errors import InvalidArgument

DatumState = Literal["SUCCESS", "FAILED", "RECOVERED"]
DATUM_STATES: tuple[str, ...] = get_args(DatumState)

T = TypeVar("T")


def _field(data: Any, name: str, kind: type[T], record: str) -> T:
    """``data[name]`` checked to be a ``kind``; a missing or mistyped field is refused."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"malformed {record}: expected an object, got {type(data).__name__}")
    if name not in data:
        raise InvalidArgument(f"malformed {record}: missing field {name!r}")
    value = data[name]
    # bool is an int in Python; a count or exit code given as true/false is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(
            f"malformed {record}: field {name!r} must be {kind.__name__}, got {value!r}"
        )
    return value


def _optional(data: Any, name: str, kind: type[T], record: str) -> T | None:
    if isinstance(data, dict) and data.get(name) is None:
        return None
    return _field(data, name, kind, record)


def _strings(data: Any, name: str, record: str) -> tuple[str, ...]:
    items = _field(data, name, list, record)
    if not all(isinstance(item, str) for item in items):
        raise InvalidArgument(f"malformed {record}: field {name!r} must be a list of strings")
    return tuple(items)


def _number(data: Any, name: str, record: str) -> float | None:
    value = data.get(name) if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"malformed {record}: field {name!r} must be a number")
    return float(value)


def _records(data: Any, name: str, parse: Callable[[Any], T], record: str) -> tuple[T, ...]:
    return tuple(parse(item) for item in _field(data, name, list, record))


@dataclass(frozen=True, slots=True)
class DatumTaskFile:
    """One input file of a datum: its input's name, its path in the input repo, its entry."""

    input: str
    path: str
    entry: FileEntry

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"input": self.input, "path": self.path, "entry": self.entry.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> DatumTaskFile:
        """Parse ``to_json`` output."""
        record = "datum task file"
        return cls(
            input=_field(data, "input", str, record),
            path=_field(data, "path", str, record),
            entry=FileEntry.from_json(_field(data, "entry", dict, record)),
        )


@dataclass(frozen=True, slots=True)
class DatumTaskInput:
    """One PFS input of a datum: where it comes from, what the glob matched, and its files.

    ``match`` is the path the glob matched in the input repo (``/`` for glob ``/``);
    the command sees it as ``$<name>`` = ``/pfs/<name><match>``.
    """

    name: str
    repo: str
    branch: str
    commit: str
    match: str
    files: tuple[DatumTaskFile, ...]
    lazy: bool = False
    empty_files: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "repo": self.repo,
            "branch": self.branch,
            "commit": self.commit,
            "match": self.match,
            "files": [item.to_json() for item in self.files],
            "lazy": self.lazy,
            "empty_files": self.empty_files,
        }

    @classmethod
    def from_json(cls, data: Any) -> DatumTaskInput:
        """Parse ``to_json`` output."""
        record = "datum task input"
        return cls(
            name=_field(data, "name", str, record),
            repo=_field(data, "repo", str, record),
            branch=_field(data, "branch", str, record),
            commit=_field(data, "commit", str, record),
            match=_field(data, "match", str, record),
            files=_records(data, "files", DatumTaskFile.from_json, record),
            lazy=_field(data, "lazy", bool, record),
            empty_files=_field(data, "empty_files", bool, record),
        )


@dataclass(frozen=True, slots=True)
class DatumTask:
    """One datum for a worker to run: inputs, transform, timeout and the ids it is known by.

    ``attempt`` counts from 1 (``datum_tries`` bounds it). ``datum_timeout`` is in
    seconds; ``None`` means no limit.
    """

    pipeline: str
    job_id: str
    datum_id: str
    attempt: int
    inputs: tuple[DatumTaskInput, ...]
    cmd: tuple[str, ...]
    stdin: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    err_cmd: tuple[str, ...] | None = None
    err_stdin: tuple[str, ...] = ()
    datum_timeout: float | None = None
    output_commit: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "pipeline": self.pipeline,
            "job_id": self.job_id,
            "datum_id": self.datum_id,
            "attempt": self.attempt,
            "inputs": [item.to_json() for item in self.inputs],
            "cmd": list(self.cmd),
            "stdin": list(self.stdin),
            "env": dict(self.env),
            "err_cmd": list(self.err_cmd) if self.err_cmd is not None else None,
            "err_stdin": list(self.err_stdin),
            "datum_timeout": self.datum_timeout,
            "output_commit": self.output_commit,
        }

    @classmethod
    def from_json(cls, data: Any) -> DatumTask:
        """Parse ``to_json`` output."""
        record = "datum task"
        env = _field(data, "env", dict, record)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidArgument(f"malformed {record}: field 'env' must map strings to strings")
        err_cmd = _strings(data, "err_cmd", record) if data.get("err_cmd") is not None else None
        return cls(
            pipeline=_field(data, "pipeline", str, record),
            job_id=_field(data, "job_id", str, record),
            datum_id=_field(data, "datum_id", str, record),
            attempt=_field(data, "attempt", int, record),
            inputs=_records(data, "inputs", DatumTaskInput.from_json, record),
            cmd=_strings(data, "cmd", record),
            stdin=_strings(data, "stdin", record),
            env=dict(env),
            err_cmd=err_cmd,
            err_stdin=_strings(data, "err_stdin", record),
            datum_timeout=_number(data, "datum_timeout", record),
            output_commit=_field(data, "output_commit", str, record),
        )


@dataclass(frozen=True, slots=True)
class DatumResult:
    """What running a datum gave.

    ``output_root`` is the file-index root of ``/pfs/out`` (paths like ``/out.txt``);
    it is ``None`` when the output is empty or the datum did not succeed — nothing
    of a failed or recovered run is stored as output. ``error`` is one line saying
    why the command failed. ``logs`` are stdout and stderr interleaved, capped.
    ``download_bytes`` are the input bytes materialised; ``upload_bytes`` the
    compressed chunk bytes newly stored for the output.
    """

    state: DatumState
    output_root: str | None
    output_files: int
    output_bytes: int
    exit_code: int | None
    error: str | None
    logs: str
    seconds: float
    download_bytes: int
    upload_bytes: int

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "state": self.state,
            "output_root": self.output_root,
            "output_files": self.output_files,
            "output_bytes": self.output_bytes,
            "exit_code": self.exit_code,
            "error": self.error,
            "logs": self.logs,
            "seconds": self.seconds,
            "download_bytes": self.download_bytes,
            "upload_bytes": self.upload_bytes,
        }

    @classmethod
    def from_json(cls, data: Any) -> DatumResult:
        """Parse ``to_json`` output."""
        record = "datum result"
        state = _field(data, "state", str, record)
        if state not in DATUM_STATES:
            raise InvalidArgument(f"malformed {record}: unknown state {state!r}")
        return cls(
            state=cast(DatumState, state),
            output_root=_optional(data, "output_root", str, record),
            output_files=_field(data, "output_files", int, record),
            output_bytes=_field(data, "output_bytes", int, record),
            exit_code=_optional(data, "exit_code", int, record),
            error=_optional(data, "error", str, record),
            logs=_field(data, "logs", str, record),
            seconds=_number(data, "seconds", record) or 0.0,
            download_bytes=_field(data, "download_bytes", int, record),
            upload_bytes=_field(data, "upload_bytes", int, record),
        )


def task_envelope(task: DatumTask, datum_tries: int) -> dict[str, Any]:
    """A task message: the task and how many times its datum may be tried."""
    return {"task": task.to_json(), "datum_tries": datum_tries}


def result_envelope(task: DatumTask, result: DatumResult, attempts: int) -> dict[str, Any]:
    """A result message, keyed by the job and datum it belongs to."""
    return {
        "pipeline": task.pipeline,
        "job_id": task.job_id,
        "datum_id": task.datum_id,
        "attempts": attempts,
        "result": result.to_json(),
    }


def worker_consumer_name(pipeline: str) -> str:
    """The durable JetStream consumer a pipeline's workers share."""
    return f"workers-{pipeline}"


__all__ = [
    "DATUM_STATES",
    "DatumResult",
    "DatumState",
    "DatumTask",
    "DatumTaskFile",
    "DatumTaskInput",
    "result_envelope",
    "task_envelope",
    "worker_consumer_name",
]
