"""The event envelope: ``{"id", "type", "time", "data"}``, the payload base class and its
registry, subjects, and decoding with types.

What the bus and the outbox carry, so it lives beside them: ``shared.platform`` knows the
envelope, not the event types. The types themselves (``repo.created``, ``commit.finished``,
``pipeline.updated`` …) are ``shared.api.events``; each registers itself here when that
module is imported, and an event whose type is not registered decodes as an
``UnknownPayload`` (kept raw), as one from a newer Tusk does.
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
from typing import Any, ClassVar, TypeVar

from shared.platform.errors import Internal, InvalidArgument

T = TypeVar("T")

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


def decode_json(tp: type[T], value: Any, where: str) -> T:
    """Build a dataclass ``tp`` from JSON ``value`` as events are decoded: every field of
    the declared type, unknown fields ignored; anything else is an ``InvalidArgument``
    naming the field (``where.field``). For records that cross a process edge."""
    decoded: T = _decode(tp, value, where)
    return decoded


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
