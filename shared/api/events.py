"""Event schemas: what Tusk services announce on the bus, one typed payload class per event type.

On the wire an event is JSON ``{"id", "type", "time", "data"}``: ``id`` a uuid4 hex (also
the ``Nats-Msg-Id``, so JetStream drops a re-sent duplicate), ``time`` RFC 3339 UTC,
``data`` the payload's fields. Its subject is ``<prefix>.<domain>.<type>.<key>`` where the
key is the repo for PFS events and the pipeline for PPS events, so consumers filter by
type and repo with subject wildcards (``tusk.pfs.commit.finished.images``,
``tusk.pfs.*.*.images``). docs/events.md is the reference for outside subscribers.

Adding an event type is one class: subclass ``PfsPayload`` (or a new domain base such as
``PpsPayload`` with its own ``subject_key``) with ``type="<noun>.<verb>"``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from shared.api.pfs_models import CommitRef
from shared.platform.errors import Internal, InvalidArgument

PAYLOAD_TYPES: dict[str, type[Payload]] = {}


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Base of every event payload; subclasses register themselves under their ``TYPE``."""

    TYPE: ClassVar[str] = ""
    DOMAIN: ClassVar[str] = ""

    def __init_subclass__(cls, type: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type:
            if type in PAYLOAD_TYPES:
                raise Internal(f"event type {type!r} defined twice")
            cls.TYPE = type
            PAYLOAD_TYPES[type] = cls

    def subject_key(self) -> str:
        """The last subject token, the thing consumers filter on (a repo, a pipeline)."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class UnknownPayload(Payload):
    """The data of an event type this code does not know (sent by a newer Tusk); kept raw."""

    type_name: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


# ---------------------------------------------------------------------------------- PFS


@dataclass(frozen=True)
class BranchRef:
    """A branch of a repo, as in branch provenance."""

    repo: str
    branch: str


@dataclass(frozen=True, kw_only=True)
class PfsPayload(Payload):
    """Base of PFS events; their subject key is the repo."""

    DOMAIN: ClassVar[str] = "pfs"
    repo: str

    def subject_key(self) -> str:
        return self.repo


@dataclass(frozen=True, kw_only=True)
class RepoCreated(PfsPayload, type="repo.created"):
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class RepoDeleted(PfsPayload, type="repo.deleted"):
    pass


@dataclass(frozen=True, kw_only=True)
class BranchCreated(PfsPayload, type="branch.created"):
    branch: str
    head: str | None = None
    provenance: list[BranchRef] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class BranchMoved(PfsPayload, type="branch.moved"):
    """A branch head moved by compare-and-set from ``old_head`` to ``new_head``."""

    branch: str
    old_head: str | None
    new_head: str | None


@dataclass(frozen=True, kw_only=True)
class BranchDeleted(PfsPayload, type="branch.deleted"):
    branch: str


def provenance_json(refs: list[CommitRef]) -> list[dict[str, Any]]:
    """Provenance as events carry it: each ``CommitRef`` with its id also under
    ``commit``, the name events used before (outside subscribers may still read it)."""
    return [{**ref.to_json(), "commit": ref.id} for ref in refs]


@dataclass(frozen=True, kw_only=True)
class CommitStarted(PfsPayload, type="commit.started"):
    branch: str | None
    commit: str
    parent: str | None = None
    provenance: list[CommitRef] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "provenance": provenance_json(self.provenance)}


@dataclass(frozen=True, kw_only=True)
class CommitFinished(PfsPayload, type="commit.finished"):
    """A commit is finished: its files are final. ``error`` is set if it finished failed."""

    branch: str | None
    commit: str
    parent: str | None = None
    provenance: list[CommitRef] = field(default_factory=list)
    size_bytes: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "provenance": provenance_json(self.provenance)}


@dataclass(frozen=True, kw_only=True)
class CommitDeleted(PfsPayload, type="commit.deleted"):
    commit: str
    branch: str | None = None


# ---------------------------------------------------------------------------------- PPS


@dataclass(frozen=True, kw_only=True)
class PpsPayload(Payload):
    """Base of PPS events; their subject key is the pipeline."""

    DOMAIN: ClassVar[str] = "pps"
    pipeline: str

    def subject_key(self) -> str:
        return self.pipeline


@dataclass(frozen=True, kw_only=True)
class PipelineUpdated(PpsPayload, type="pipeline.updated"):
    """A pipeline was created, updated, stopped, started or deleted (``deleted``)."""

    version: int
    state: str
    deleted: bool = False


@dataclass(frozen=True, kw_only=True)
class JobStateChanged(PpsPayload, type="job.state"):
    """A job moved to ``state`` (Pachyderm's JOB_* names)."""

    job: str
    state: str
    reason: str | None = None
    output_commit: str | None = None


# ------------------------------------------------------------------------------- events


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Event:
    """One event: a payload plus its id and time. Build with ``Event(payload)``."""

    payload: Payload
    id: str = field(default_factory=_new_id)
    time: str = field(default_factory=_now_rfc3339)

    @property
    def type(self) -> str:
        if isinstance(self.payload, UnknownPayload):
            return self.payload.type_name
        return self.payload.TYPE

    def subject(self, prefix: str) -> str:
        """``<prefix>.<domain>.<type>.<key>``, e.g. ``tusk.pfs.commit.finished.images``."""
        if isinstance(self.payload, UnknownPayload):
            raise Internal(f"cannot route an event of unknown type {self.type!r}")
        return f"{prefix}.{self.payload.DOMAIN}.{self.type}.{self.payload.subject_key()}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, "data": self.payload.to_json()}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Event:
        """Parse and check an event; an unknown type gives an ``UnknownPayload``, not an error."""
        try:
            event_id, type_name, time, data = body["id"], body["type"], body["time"], body["data"]
        except (KeyError, TypeError):
            raise InvalidArgument("event: expected an object with id, type, time, data") from None
        for name, value in (("id", event_id), ("type", type_name), ("time", time)):
            if not isinstance(value, str):
                raise InvalidArgument(f"event: {name} must be a string")
        if not isinstance(data, dict):
            raise InvalidArgument(f"event {type_name}: data must be an object")
        payload_class = PAYLOAD_TYPES.get(type_name)
        payload: Payload
        if payload_class is None:
            payload = UnknownPayload(type_name=type_name, data=data)
        else:
            payload = _decode(payload_class, data, f"event {type_name}: data")
        return cls(payload=payload, id=event_id, time=time)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("event: not valid JSON") from None
        return cls.from_json(body)


def subject_filter(prefix: str, event_type: str | None = None, key: str = "*") -> str:
    """Subject wildcard for one event type (and optionally one repo/pipeline) under ``prefix``.

    ``subject_filter("tusk", "commit.finished", "images")`` → ``tusk.pfs.commit.finished.images``.
    Without a type it matches every event of the prefix (``tusk.>``).
    """
    if event_type is None:
        return f"{prefix}.>"
    payload_class = PAYLOAD_TYPES.get(event_type)
    if payload_class is None:
        raise InvalidArgument(
            f"unknown event type {event_type!r}; known: {', '.join(sorted(PAYLOAD_TYPES))}"
        )
    return f"{prefix}.{payload_class.DOMAIN}.{event_type}.{key}"


# ------------------------------------------------------------------ decoding with types


def _decode(tp: Any, value: Any, where: str) -> Any:
    """Build a value of type ``tp`` from JSON ``value``; refuse what does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(option, value, where)
            except InvalidArgument as exc:
                errors.append(exc)
        raise errors[0] if errors else InvalidArgument(f"{where}: must not be null")
    if origin is list:
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}: expected a list")
        (item_type,) = typing.get_args(tp)
        return [_decode(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        aliases: dict[str, str] = getattr(tp, "JSON_ALIASES", {})
        kwargs = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            key = f.name if f.name in value else aliases.get(f.name, f.name)
            if key in value:
                kwargs[f.name] = _decode(hints[f.name], value[key], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidArgument(f"{where}.{f.name}: missing")
        # Unknown fields are ignored: a newer producer may add fields to a known type.
        return tp(**kwargs)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{where}: expected an integer")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise InvalidArgument(f"{where}: expected a {tp.__name__}")
        return value
    if tp is Any or tp is dict or origin is dict:
        return value
    raise Internal(f"{where}: no decoder for type {tp!r}")
