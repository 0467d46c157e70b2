"""Building the API's frozen record dataclasses from JSON objects."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """``cls(**data)`` keeping only the fields ``cls`` has, so a newer server's extra
    fields do not break an older client."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})
