"""Building the API's frozen record dataclasses from JSON objects."""

from __future__ import annotations

from dataclasses import asdict, fields
from functools import cache
from typing import Any, Self, TypeVar, cast

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """``cls(**data)`` keeping only the fields ``cls`` has, so a newer server's extra
    fields do not break an older client."""
    names = _field_names(cls)  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@cache
def _field_names(cls: type) -> frozenset[str]:
    # dataclasses.fields() walks the class each call: a listing of 100,000 files
    # builds 100,000 records.
    return frozenset(f.name for f in fields(cls))


class Record:
    """Base of the API's frozen dataclass records: ``to_json`` and a tolerant ``from_json``.

    Records with nested records override ``from_json`` to build those.
    """

    def to_json(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return from_dict(cls, data)
