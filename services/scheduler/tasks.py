"""Datum tasks and results: the records the scheduler sends to a worker and gets back.

A ``DatumTask`` carries everything a worker needs to run one datum without asking
anyone: the file entries of the datum's input files (so the worker reads chunks
straight from the object store), the transform, and the ids Pachyderm exposes to
the command as environment variables. A ``DatumResult`` reports the outcome and,
on success, the file-index root of the datum's ``/pfs/out``.

Both travel as JSON (``to_json`` / ``from_json``); ``from_json`` refuses a malformed
record with ``InvalidArgument`` naming the field. Fields added after the first release
are optional on the wire, so tasks queued by an older scheduler still parse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

from shared.pipeline.spec import SecretUse
from shared.platform.errors import InvalidArgument
from shared.storage.chunking import FileEntry

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


def _optional_records(
    data: Any, name: str, parse: Callable[[Any], T], record: str
) -> tuple[T, ...]:
    if isinstance(data, dict) and data.get(name) is None:
        return ()
    return _records(data, name, parse, record)


def _ints(data: Any, name: str, record: str) -> tuple[int, ...]:
    if isinstance(data, dict) and data.get(name) is None:
        return ()
    items = _field(data, name, list, record)
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise InvalidArgument(f"malformed {record}: field {name!r} must be a list of integers")
    return tuple(items)


def secret_use_to_json(use: SecretUse) -> dict[str, Any]:
    """JSON form of a ``transform.secrets`` item (names only: a task never holds values)."""
    return {
        "name": use.name,
        "key": use.key,
        "env_var": use.env_var,
        "mount_path": use.mount_path,
    }


def secret_use_from_json(data: Any) -> SecretUse:
    """Parse ``secret_use_to_json`` output."""
    record = "datum task secret"
    return SecretUse(
        name=_field(data, "name", str, record),
        key=_optional(data, "key", str, record),
        env_var=_optional(data, "env_var", str, record),
        mount_path=_optional(data, "mount_path", str, record),
    )


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
    the command sees it as ``$<name>`` = ``/pfs/<name><match>``. A datum may hold
    several of these with one ``name`` (the matches a ``group`` gathered, say): their
    files share ``/pfs/<name>``. ``join_on`` / ``group_by`` is the key that brought
    the match in, when the input is part of a join or a group.
    """

    name: str
    repo: str
    branch: str
    commit: str
    match: str
    files: tuple[DatumTaskFile, ...]
    lazy: bool = False
    empty_files: bool = False
    join_on: str | None = None
    group_by: str | None = None

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
            "join_on": self.join_on,
            "group_by": self.group_by,
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
            join_on=_optional(data, "join_on", str, record),
            group_by=_optional(data, "group_by", str, record),
        )


@dataclass(frozen=True, slots=True)
class DatumTask:
    """One datum for a worker to run: inputs, transform, timeout and the ids it is known by.

    ``attempt`` counts from 1 (``datum_tries`` bounds it). ``datum_timeout`` is in
    seconds; ``None`` means no limit. ``accept_return_code``, ``working_dir``, ``user``,
    ``secrets`` and ``datum_batching`` are the transform's fields of those names;
    ``secrets`` names what the worker fetches for the datum, never a value.
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
    accept_return_code: tuple[int, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    secrets: tuple[SecretUse, ...] = ()
    datum_batching: bool = False

    @property
    def ids(self) -> TaskIds:
        """The pipeline, job and datum this task belongs to."""
        return TaskIds(self.pipeline, self.job_id, self.datum_id)

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
            "accept_return_code": list(self.accept_return_code),
            "working_dir": self.working_dir,
            "user": self.user,
            "secrets": [secret_use_to_json(use) for use in self.secrets],
            "datum_batching": self.datum_batching,
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
            accept_return_code=_ints(data, "accept_return_code", record),
            working_dir=_optional(data, "working_dir", str, record),
            user=_optional(data, "user", str, record),
            secrets=_optional_records(data, "secrets", secret_use_from_json, record),
            datum_batching=bool(_optional(data, "datum_batching", bool, record)),
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


@dataclass(frozen=True, slots=True)
class TaskIds:
    """What a task's result is filed under."""

    pipeline: str
    job_id: str
    datum_id: str


def task_envelope(task: DatumTask, datum_tries: int) -> dict[str, Any]:
    """A task message: the task and how many times its datum may be tried."""
    return {"task": task.to_json(), "datum_tries": datum_tries}


def batch_envelope(tasks: Sequence[DatumTask], datum_tries: int) -> dict[str, Any]:
    """A task message holding several datums of one job: each runs, and publishes its own
    result, as if it had come alone; the message is acked once all their results are out.
    Only tiny datums travel together (``batch_tasks``), so one message is redelivered whole
    after a worker dies, and each of its datums counts that as a try."""
    return {"tasks": [task.to_json() for task in tasks], "datum_tries": datum_tries}


# Datums per task message at most, and the bytes their tasks may take together: a message
# is fetched, heartbeaten, acked (and redelivered) as one, so only small datums share one.
MAX_BATCH = 32
MAX_BATCH_BYTES = 64 << 10
# Messages each worker slot should see of a job at least, so a small job still spreads
# over every worker and a slow datum holds back few others.
_MESSAGES_PER_SLOT = 8


def batch_size(datums: int, slots: int) -> int:
    """How many datums of a job of ``datums`` share one task message, for ``slots`` datums
    running at once over all its workers: 1 for small jobs (each datum alone, as before),
    up to ``MAX_BATCH`` for large ones."""
    return max(1, min(MAX_BATCH, datums // (max(1, slots) * _MESSAGES_PER_SLOT)))


def batch_tasks(sizes: Sequence[int], size: int) -> list[list[int]]:
    """Indices of tasks (``sizes``: each one's JSON length) grouped into messages:
    neighbours together, at most ``size`` per message and ``MAX_BATCH_BYTES`` of tasks (a
    task bigger than that goes alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, length in enumerate(sizes):
        if current and (len(current) >= size or used + length > MAX_BATCH_BYTES):
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += length
    if current:
        groups.append(current)
    return groups


def task_ref_envelope(ids: TaskIds, key: str) -> dict[str, Any]:
    """A task message whose envelope is stored at ``key`` in the object store (too big
    for NATS). The ids ride along, so a worker that cannot fetch or read the stored
    envelope can still fail the datum instead of leaving its job waiting."""
    return {"ref": key, **_ids_json(ids)}


def batch_readable_ids(body: Any, pipeline: str) -> list[TaskIds] | None:
    """The ids of each task of a batch message that did not parse (``readable_ids`` for
    each); ``None`` when the message is no batch or one of its tasks names nothing."""
    items = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return None
    found = [readable_ids({"task": item}, None, pipeline) for item in items]
    if any(ids is None for ids in found):
        return None
    return [ids for ids in found if ids is not None]


def readable_ids(body: Any, msg_id: str | None, pipeline: str) -> TaskIds | None:
    """The ids of a task message that did not parse, from whatever is readable: the
    task's own fields, a stored task's envelope, or the message id ``<job>:<datum>``;
    ``None`` when nothing names a job and a datum. The pipeline is always the worker's:
    a message in its queue cannot file a result under another pipeline."""
    for record in (body.get("task") if isinstance(body, dict) else None, body):
        if not isinstance(record, dict):
            continue
        job, datum = record.get("job_id"), record.get("datum_id")
        if isinstance(job, str) and isinstance(datum, str) and job and datum:
            return TaskIds(pipeline, job, datum)
    job, _, datum = (msg_id or "").partition(":")
    if job and datum:
        return TaskIds(pipeline, job, datum)
    return None


def _ids_json(ids: TaskIds) -> dict[str, str]:
    return {"pipeline": ids.pipeline, "job_id": ids.job_id, "datum_id": ids.datum_id}


def result_envelope(ids: TaskIds, result: DatumResult, attempts: int) -> dict[str, Any]:
    """A result message, keyed by the job and datum it belongs to."""
    return {**_ids_json(ids), "attempts": attempts, "result": result.to_json()}


def failed_result(error: str, *, logs: str = "", seconds: float = 0.0) -> DatumResult:
    """A ``FAILED`` result with nothing stored, for a datum that could not run to the end."""
    return DatumResult(
        state="FAILED",
        output_root=None,
        output_files=0,
        output_bytes=0,
        exit_code=None,
        error=error,
        logs=logs,
        seconds=seconds,
        download_bytes=0,
        upload_bytes=0,
    )


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
    "TaskIds",
    "batch_envelope",
    "batch_readable_ids",
    "batch_size",
    "batch_tasks",
    "failed_result",
    "readable_ids",
    "result_envelope",
    "secret_use_from_json",
    "secret_use_to_json",
    "task_envelope",
    "task_ref_envelope",
    "worker_consumer_name",
]
