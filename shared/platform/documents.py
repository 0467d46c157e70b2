"""Reading the JSON or YAML documents users hand to Tusk (pipeline specs, secret manifests).

Pure: no I/O. A key given twice in one object is refused (JSON and YAML parsers would
silently keep the last one), YAML timestamps stay strings, and a syntax error names the
line and column. Every message starts with what was being read, e.g. ``pipeline spec: ``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from shared.platform.errors import InvalidArgument


class _DuplicateKey(ValueError):
    """A key given twice in one object; ``where`` is ``line L, column C: `` or empty."""

    def __init__(self, key: Any, where: str = "") -> None:
        super().__init__(key)
        self.key = key
        self.where = where


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps timestamps as strings."""


# Timestamps stay strings so a time is validated the same way from YAML and JSON.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            mark = key_node.start_mark
            raise _DuplicateKey(key, f"line {mark.line + 1}, column {mark.column + 1}: ")
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_documents(text: str, what: str) -> list[Any]:
    """The documents in ``text``: JSON (values one after another, or separated by ``---``
    lines) when it starts with '{' or '[', else YAML (documents separated by ``---``, empty
    ones dropped).

    Malformed input raises ``InvalidArgument`` starting with ``what``.
    """
    stripped = text.lstrip("\ufeff \t\r\n")
    try:
        return _load_json(stripped, what) if stripped[:1] in ("{", "[") else _load_yaml(text, what)
    except _DuplicateKey as exc:
        raise InvalidArgument(f"{what}: {exc.where}duplicate key {exc.key!r}") from None


# A YAML document separator on a line of its own between JSON values: Pachyderm reads JSON
# with a YAML decoder, so its examples put '---' between JSON specs.
_SEPARATOR = re.compile(r"---[ \t]*(?:\r?\n|$)")


def _load_json(text: str, what: str) -> list[Any]:
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if separator := _SEPARATOR.match(text, pos):
            pos = separator.end()
            continue
        if pos == len(text):
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"{what}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        docs.append(doc)


def _load_yaml(text: str, what: str) -> list[Any]:
    try:
        return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidArgument(f"{what}: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{what}: invalid YAML: {exc}") from None
