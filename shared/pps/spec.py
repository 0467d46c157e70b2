"""Pachyderm pipeline specs: read (JSON or YAML), validate, normalize.

Pure: no I/O. A wrong spec is refused with ``InvalidArgument`` whose message names the
field path and the reason, e.g.
``pipeline spec: input.cross[1].pfs.glob: invalid glob '/[a': '[' without a closing ']'``;
the path is also in the error's ``details["field"]``.

Checks that need the database (input repos exist, the DAG has no cycle) belong to the
PPS service. docs/pipeline-spec.md is the user's reference for every field.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import blake3
import yaml

from shared.errors import InvalidArgument
from shared.glob import compile_glob
from shared.names import COMMIT_ID_RE, check_name
from shared.pps.durations import format_duration, parse_cron_spec, parse_duration

DEFAULT_BRANCH = "master"
DEFAULT_DATUM_TRIES = 3
REPROCESS_SPECS = ("until_success", "every_job")
# /pfs/out is the datum's output directory, so no input may be called "out".
RESERVED_INPUT_NAMES = frozenset({"out"})

# The fields each kind of spec object takes.
_FIELDS: dict[str, tuple[str, ...]] = {
    "": (
        "pipeline",
        "description",
        "transform",
        "input",
        "parallelism_spec",
        "datum_tries",
        "datum_timeout",
        "job_timeout",
        "output_branch",
        "reprocess_spec",
        "resource_requests",
        "resource_limits",
    ),
    "pipeline": ("name",),
    "transform": ("cmd", "stdin", "env", "err_cmd", "err_stdin", "image"),
    "input": ("pfs", "cross", "union", "join", "group", "cron"),
    "pfs": (
        "name",
        "repo",
        "branch",
        "commit",
        "glob",
        "join_on",
        "group_by",
        "outer_join",
        "lazy",
        "empty_files",
    ),
    "cron": ("name", "repo", "spec", "overwrite", "start"),
    "parallelism_spec": ("constant",),
    "resources": ("cpu", "memory", "gpu", "disk"),
    "gpu": ("type", "number"),
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Pachyderm fields Tusk knows but does not implement: refused with a clearer word than
# "unknown field", so a user porting a spec knows it is a gap, not a typo.
_UNSUPPORTED: dict[str, frozenset[str]] = {
    "": _words(
        """egress spout service s3_out autoscaling pod_spec pod_patch scheduling_spec
        sidecar_resource_limits sidecar_resource_requests datum_set_spec tolerations metadata
        salt spec_commit update reprocess tf_job determined max_queue_size chunk_spec standby
        cache_size enable_stats maximum_expected_uptime"""
    ),
    "pipeline": _words("project"),
    "transform": _words(
        """secrets image_pull_secrets accept_return_code debug user working_dir dockerfile
        memory_volume"""
    ),
    "pfs": _words("project s3 trigger repo_type"),
    "cron": _words("project"),
    "input": _words("git"),
}


# --- the typed spec -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretUse:
    """``transform.secrets[i]``: one key of a Tusk secret (``tusk create secret``) given to
    the datum as the variable ``env_var``, or every key as a file under ``mount_path``."""

    name: str
    key: str | None = None
    env_var: str | None = None
    mount_path: str | None = None


@dataclass(frozen=True)
class Transform:
    """What runs for each datum. ``image`` is kept for Kubernetes; local workers ignore it.

    ``accept_return_code``: exit codes besides 0 that count as success. ``user``: the
    ``uid[:gid]`` (or a name known to the sandbox) the command runs as; ``None`` is the
    sandbox's default. ``working_dir``: the command's directory (default ``/pfs``).
    """

    cmd: tuple[str, ...]
    stdin: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    err_cmd: tuple[str, ...] = ()
    err_stdin: tuple[str, ...] = ()
    image: str | None = None
    accept_return_code: tuple[int, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    secrets: tuple[SecretUse, ...] = ()


@dataclass(frozen=True)
class BranchTrigger:
    """``input.pfs.trigger``: move ``PfsInput.branch`` to the head of ``branch`` when the
    condition holds (Pachyderm's deferred processing). ``all``: every set condition must
    hold, else any one. ``size`` in bytes since the branch last moved, ``commits`` a count,
    ``cron`` a schedule."""

    branch: str
    size: int | None = None
    commits: int | None = None
    cron: str | None = None
    all: bool = False


@dataclass(frozen=True)
class PfsInput:
    """A repo branch sliced into datums by ``glob``; files appear at ``/pfs/<name>/<path>``."""

    name: str
    repo: str
    glob: str
    branch: str = DEFAULT_BRANCH
    commit: str | None = None
    lazy: bool = False
    empty_files: bool = False
    join_on: str | None = None
    group_by: str | None = None
    outer_join: bool = False
    trigger: BranchTrigger | None = None


@dataclass(frozen=True)
class CronInput:
    """A tick repo (``<pipeline>_<name>`` by default) that Tusk commits to on ``spec``."""

    name: str
    repo: str
    spec: str
    overwrite: bool = False
    start: datetime | None = None
    branch: str = DEFAULT_BRANCH


@dataclass(frozen=True)
class CrossInput:
    """Every combination of one datum from each input."""

    inputs: tuple[Input, ...]


@dataclass(frozen=True)
class UnionInput:
    """The datums of each input, one input after another."""

    inputs: tuple[Input, ...]


@dataclass(frozen=True)
class JoinInput:
    """Matches whose ``join_on`` keys agree, combined; each input is a pfs input with ``join_on``."""

    inputs: tuple[PfsInput, ...]


@dataclass(frozen=True)
class GroupInput:
    """All matches with the same ``group_by`` key form one datum."""

    inputs: tuple[PfsInput, ...]


Input = PfsInput | CrossInput | UnionInput | JoinInput | GroupInput | CronInput


@dataclass(frozen=True)
class Gpu:
    """A GPU request: the Kubernetes resource ``type`` (e.g. ``nvidia.com/gpu``) and how many."""

    type: str
    number: int


@dataclass(frozen=True)
class Resources:
    """``resource_requests`` / ``resource_limits``: cpu cores, memory and disk quantities, gpus."""

    cpu: float | None = None
    memory: str | None = None
    gpu: Gpu | None = None
    disk: str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline spec with Pachyderm's defaults applied."""

    name: str
    transform: Transform
    input: Input
    description: str = ""
    parallelism: int = 1
    datum_tries: int = DEFAULT_DATUM_TRIES
    datum_timeout: float | None = None
    job_timeout: float | None = None
    output_branch: str = DEFAULT_BRANCH
    reprocess_spec: str = "until_success"
    resource_requests: Resources | None = None
    resource_limits: Resources | None = None
    # The normalized spec in Pachyderm's field names (spec_to_json), for display and storage.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --- reading documents --------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps timestamps as strings."""


# Timestamps stay strings so `start:` is validated the same way from YAML and JSON.
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _SpecLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            mark = key_node.start_mark
            raise InvalidArgument(
                f"pipeline spec: line {mark.line + 1}, column {mark.column + 1}: "
                f"duplicate key {key!r}"
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidArgument(f"pipeline spec: duplicate key {key!r}")
        out[key] = value
    return out


def load_spec_documents(text: str) -> list[dict[str, Any]]:
    """The pipeline spec objects in ``text``: JSON (an object, an array of objects, or objects
    one after another) or YAML (documents separated by ``---``). Malformed input raises
    ``InvalidArgument`` naming the line and column."""
    stripped = text.lstrip("\ufeff \t\r\n")
    docs = _load_json(stripped) if stripped[:1] in ("{", "[") else _load_yaml(text)
    out: list[dict[str, Any]] = []
    for number, doc in enumerate(docs, 1):
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if not isinstance(item, dict):
                raise InvalidArgument(
                    f"pipeline spec: document {number} is a {_type_name(item)}, "
                    "expected an object with 'pipeline', 'transform' and 'input'"
                )
            out.append(item)
    if not out:
        raise InvalidArgument("pipeline spec: no pipeline spec found in the input")
    return out


def _load_json(text: str) -> list[Any]:
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"pipeline spec: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        docs.append(doc)


def _load_yaml(text: str) -> list[Any]:
    try:
        return [doc for doc in yaml.load_all(text, Loader=_SpecLoader) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidArgument(f"pipeline spec: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"pipeline spec: invalid YAML: {exc}") from None


# --- validation -----------------------------------------------------------------------------


def _fail(path: str, reason: str, *, field_path: str | None = None) -> NoReturn:
    where = f"{path}: " if path else ""
    raise InvalidArgument(
        f"pipeline spec: {where}{reason}", field=path if field_path is None else field_path
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Obj:
    """One spec object being read: unknown keys are refused at once (so a typo is reported
    before the "required" error it causes); typed getters know the field path."""

    def __init__(self, value: Any, path: str, kind: str) -> None:
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_type_name(value)}")
        self.data: dict[str, Any] = value
        self.path = path
        allowed = _FIELDS[kind]
        for key in value:
            if key in allowed:
                continue
            if not isinstance(key, str):
                _fail(path, f"field names must be strings, got {key!r}")
            if key in _UNSUPPORTED.get(kind, ()):
                _fail(path, f"{key!r} is a Pachyderm field that Tusk does not support")
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            _fail(path, f"unknown field {key!r}{suggestion}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None or value == "":
            if required:
                _fail(self.at(key), "required")
            return default
        if not isinstance(value, str):
            _fail(self.at(key), f"expected a string, got {_type_name(value)} {value!r}")
        return value

    def req_string(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            _fail(self.at(key), f"expected true or false, got {_type_name(value)} {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(self.at(key), f"expected a whole number, got {_type_name(value)} {value!r}")
        if value < minimum:
            _fail(self.at(key), f"must be at least {minimum}, got {value}")
        return value

    def strings(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None or value == []:
            if required:
                _fail(self.at(key), "required: a non-empty list of strings")
            return ()
        if not isinstance(value, list):
            _fail(self.at(key), f"expected a list of strings, got {_type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                _fail(
                    f"{self.at(key)}[{i}]",
                    f"expected a string, got {_type_name(item)} {item!r} (quote it in YAML)",
                )
        return tuple(value)


def _checked_name(path: str, kind: str, name: str) -> str:
    try:
        return check_name(kind, name)
    except InvalidArgument as exc:
        _fail(path, exc.message)


def parse_pipeline_spec(raw: Mapping[str, Any]) -> PipelineSpec:
    """Validate one spec object and return it typed, with defaults applied."""
    top = _Obj(dict(raw) if isinstance(raw, Mapping) else raw, "", "")
    if not top.has("pipeline"):
        _fail("pipeline.name", "required")
    pipeline = _Obj(top.raw("pipeline"), "pipeline", "pipeline")
    name = _checked_name("pipeline.name", "pipeline", pipeline.req_string("name"))
    description = top.string("description", default="") or ""
    if not top.has("transform"):
        _fail("transform", "required")
    transform = _parse_transform(_Obj(top.raw("transform"), "transform", "transform"))
    if not top.has("input"):
        _fail("input", "required")
    parsed_input = _parse_input(top.raw("input"), "input", name, None)
    _check_unique_names(parsed_input)

    parallelism = 1
    if top.has("parallelism_spec"):
        par = _Obj(top.raw("parallelism_spec"), "parallelism_spec", "parallelism_spec")
        parallelism = par.integer("constant", 1, 1)
    spec = PipelineSpec(
        name=name,
        description=description,
        transform=transform,
        input=parsed_input,
        parallelism=parallelism,
        datum_tries=top.integer("datum_tries", DEFAULT_DATUM_TRIES, 1),
        datum_timeout=_timeout(top, "datum_timeout"),
        job_timeout=_timeout(top, "job_timeout"),
        output_branch=_checked_name(
            "output_branch",
            "branch",
            top.string("output_branch", default=DEFAULT_BRANCH) or DEFAULT_BRANCH,
        ),
        reprocess_spec=_reprocess_spec(top),
        resource_requests=_resources(top, "resource_requests"),
        resource_limits=_resources(top, "resource_limits"),
    )
    return replace(spec, raw=spec_to_json(spec))


def _parse_transform(obj: _Obj) -> Transform:
    cmd = obj.strings("cmd", required=True)
    stdin = obj.strings("stdin")
    env_value = obj.raw("env")
    env: dict[str, str] = {}
    if env_value is not None:
        if not isinstance(env_value, dict):
            _fail(obj.at("env"), f"expected an object of strings, got {_type_name(env_value)}")
        for key, value in env_value.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                _fail(obj.at("env"), f"invalid variable name {key!r}")
            if not isinstance(value, str):
                _fail(
                    f"{obj.at('env')}.{key}",
                    f"expected a string, got {_type_name(value)} {value!r} (quote it in YAML)",
                )
            env[key] = value
    transform = Transform(
        cmd=cmd,
        stdin=stdin,
        env=env,
        err_cmd=obj.strings("err_cmd"),
        err_stdin=obj.strings("err_stdin"),
        image=obj.string("image"),
    )
    if transform.err_stdin and not transform.err_cmd:
        _fail(obj.at("err_stdin"), "needs err_cmd")
    return transform


_INPUT_KINDS = ("pfs", "cross", "union", "join", "group", "cron")


def _parse_input(value: Any, path: str, pipeline: str, parent: str | None) -> Input:
    obj = _Obj(value, path, "input")
    present = [kind for kind in _INPUT_KINDS if obj.has(kind)]
    if len(present) != 1:
        found = f"got {', '.join(present)}" if present else "got none"
        _fail(path, f"expected exactly one of {', '.join(_INPUT_KINDS)}; {found}")
    kind = present[0]
    sub = _join(path, kind)
    if kind == "pfs":
        return _parse_pfs(_Obj(obj.data[kind], sub, "pfs"), pipeline, parent)
    if kind == "cron":
        if parent in ("join", "group"):
            _fail(sub, f"a {parent} input takes only pfs inputs")
        return _parse_cron(_Obj(obj.data[kind], sub, "cron"), pipeline)
    items = obj.data[kind]
    if not isinstance(items, list):
        _fail(sub, f"expected a list of inputs, got {_type_name(items)}")
    if not items:
        _fail(sub, "needs at least one input")
    if parent in ("join", "group"):
        _fail(sub, f"a {parent} input takes only pfs inputs")
    children = [_parse_input(item, f"{sub}[{i}]", pipeline, kind) for i, item in enumerate(items)]
    if kind == "cross":
        return CrossInput(tuple(children))
    if kind == "union":
        return UnionInput(tuple(children))
    pfs_children = tuple(child for child in children if isinstance(child, PfsInput))
    key = "join_on" if kind == "join" else "group_by"
    for i, child in enumerate(pfs_children):
        if getattr(child, key) is None:
            _fail(f"{sub}[{i}].pfs.{key}", f"required for every input of a {kind}")
    return JoinInput(pfs_children) if kind == "join" else GroupInput(pfs_children)


def _parse_pfs(obj: _Obj, pipeline: str, parent: str | None) -> PfsInput:
    repo = _checked_name(obj.at("repo"), "repo", obj.req_string("repo"))
    if repo == pipeline:
        _fail(obj.at("repo"), f"a pipeline cannot read its own output repo {repo!r}")
    glob_text = obj.req_string("glob")
    try:
        glob = compile_glob(glob_text)
    except InvalidArgument as exc:
        _fail(obj.at("glob"), exc.message)
    name = _checked_name(obj.at("name"), "input", obj.string("name", default=repo) or repo)
    if name in RESERVED_INPUT_NAMES:
        _fail(obj.at("name"), f"{name!r} is reserved for the output directory /pfs/out")
    branch = _checked_name(
        obj.at("branch"), "branch", obj.string("branch", default=DEFAULT_BRANCH) or DEFAULT_BRANCH
    )
    commit = obj.string("commit")
    if commit is not None and not COMMIT_ID_RE.match(commit):
        _fail(obj.at("commit"), f"invalid commit id {commit!r}: expected 32 hex digits")
    join_on = obj.string("join_on")
    group_by = obj.string("group_by")
    outer_join = obj.boolean("outer_join")
    groups = glob.regex.groups
    for key, text, allowed_in in (("join_on", join_on, "join"), ("group_by", group_by, "group")):
        if text is None:
            continue
        if parent != allowed_in:
            _fail(obj.at(key), f"only meaningful for an input inside a {allowed_in}")
        try:
            refs = template_groups(text)
        except InvalidArgument as exc:
            _fail(obj.at(key), exc.message)
        if not refs:
            _fail(obj.at(key), f"{text!r} refers to no capture group; use e.g. '$1'")
        for ref in refs:
            if ref > groups:
                have = f"has {groups}" if groups else "has none; add one, e.g. '/(*).csv'"
                _fail(
                    obj.at(key),
                    f"'${ref}' needs capture group {ref}, but glob {glob_text!r} {have}",
                )
    if outer_join and parent != "join":
        _fail(obj.at("outer_join"), "only meaningful for an input inside a join")
    pfs = PfsInput(
        name=name,
        repo=repo,
        glob=glob_text,
        branch=branch,
        commit=commit,
        lazy=obj.boolean("lazy"),
        empty_files=obj.boolean("empty_files"),
        join_on=join_on,
        group_by=group_by,
        outer_join=outer_join,
    )
    return pfs


def _parse_cron(obj: _Obj, pipeline: str) -> CronInput:
    name = _checked_name(obj.at("name"), "input", obj.req_string("name"))
    if name in RESERVED_INPUT_NAMES:
        _fail(obj.at("name"), f"{name!r} is reserved for the output directory /pfs/out")
    spec = obj.req_string("spec")
    try:
        parse_cron_spec(spec)
    except InvalidArgument as exc:
        _fail(obj.at("spec"), exc.message)
    default_repo = f"{pipeline}_{name}"
    repo = _checked_name(obj.at("repo"), "repo", obj.string("repo", default=default_repo) or "")
    start_text = obj.string("start")
    start = None
    if start_text is not None:
        try:
            start = datetime.fromisoformat(start_text)
        except ValueError:
            start = None
        if start is None or start.tzinfo is None:
            _fail(
                obj.at("start"),
                f"expected an RFC 3339 time with a zone, e.g. '2024-01-01T00:00:00Z', "
                f"got {start_text!r}",
            )
        start = start.astimezone(UTC)
    cron = CronInput(
        name=name, repo=repo, spec=spec, overwrite=obj.boolean("overwrite"), start=start
    )
    return cron


def _timeout(top: _Obj, key: str) -> float | None:
    text = top.string(key)
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except InvalidArgument as exc:
        _fail(key, exc.message)
    if seconds <= 0:
        _fail(key, f"must be positive, got {text!r}")
    return seconds


def _reprocess_spec(top: _Obj) -> str:
    value = top.string("reprocess_spec", default=REPROCESS_SPECS[0]) or REPROCESS_SPECS[0]
    if value not in REPROCESS_SPECS:
        _fail("reprocess_spec", f"expected one of {', '.join(REPROCESS_SPECS)}, got {value!r}")
    return value


# Kubernetes quantities: 64M, 1Gi, 0.5G, 1e9, 500m.
_QUANTITY_RE = re.compile(
    r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+|[KMGTPE]i|[kMGTPEm])?$"
)
_QUANTITY_FACTORS: dict[str, float] = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    **{f"{p}i": float(1 << (10 * (i + 1))) for i, p in enumerate("KMGTPE")},
}


def parse_quantity(text: str) -> float:
    """The value of a Kubernetes quantity (``"64M"`` → 64e6, ``"1Gi"`` → 2**30)."""
    if not _QUANTITY_RE.match(text):
        raise InvalidArgument(f"invalid quantity {text!r}: expected e.g. '64M', '1Gi' or '500m'")
    number = re.match(r"^[0-9.]+(?:[eE][+-]?[0-9]+)?", text)
    assert number is not None
    return float(number.group(0)) * _QUANTITY_FACTORS[text[number.end() :]]


def _resources(top: _Obj, key: str) -> Resources | None:
    if not top.has(key):
        return None
    obj = _Obj(top.raw(key), key, "resources")
    cpu_value = obj.raw("cpu")
    cpu: float | None = None
    if cpu_value is not None:
        if isinstance(cpu_value, bool) or not isinstance(cpu_value, int | float):
            _fail(obj.at("cpu"), f"expected a number of cores, got {_type_name(cpu_value)}")
        if cpu_value < 0:
            _fail(obj.at("cpu"), f"must not be negative, got {cpu_value}")
        cpu = float(cpu_value)
    quantities: dict[str, str | None] = {}
    for name in ("memory", "disk"):
        text = obj.string(name)
        if text is not None:
            try:
                parse_quantity(text)
            except InvalidArgument as exc:
                _fail(obj.at(name), exc.message)
        quantities[name] = text
    gpu: Gpu | None = None
    if obj.has("gpu"):
        gobj = _Obj(obj.raw("gpu"), obj.at("gpu"), "gpu")
        gpu = Gpu(gobj.req_string("type"), gobj.integer("number", 1, 1))
    return Resources(cpu=cpu, memory=quantities["memory"], gpu=gpu, disk=quantities["disk"])


# --- join_on / group_by templates ------------------------------------------------------------

_TEMPLATE_REF = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z0-9_]*))")


def template_groups(template: str) -> list[int]:
    """The capture group numbers a ``join_on``/``group_by`` template refers to, in order.

    Go's ``Regexp.Expand`` syntax, as Pachyderm uses: ``$1``, ``${1}``, ``$$`` for '$'.
    """
    refs: list[int] = []
    for number, literal in _template_tokens(template):
        if number is not None:
            refs.append(number)
        del literal
    return refs


def expand_template(template: str, groups: tuple[str, ...]) -> str:
    """``template`` with each ``$N`` replaced by ``groups[N-1]`` (a join or group key)."""
    return "".join(
        literal if number is None else groups[number - 1]
        for number, literal in _template_tokens(template)
    )


def _template_tokens(template: str) -> Iterator[tuple[int | None, str]]:
    pos = 0
    while pos < len(template):
        dollar = template.find("$", pos)
        if dollar == -1:
            yield None, template[pos:]
            return
        if dollar > pos:
            yield None, template[pos:dollar]
        if template.startswith("$$", dollar):
            yield None, "$"
            pos = dollar + 2
            continue
        ref = _TEMPLATE_REF.match(template, dollar)
        assert ref is not None
        name = ref.group(1) if ref.group(1) is not None else ref.group(2)
        if not name.isdigit() or int(name) == 0:
            raise InvalidArgument(
                f"invalid template {template!r}: '$' must be followed by a capture group "
                "number ($1 or ${1}); write $$ for a literal '$'"
            )
        yield int(name), ""
        pos = ref.end()


# --- helpers over the typed spec -----------------------------------------------------------


def iter_inputs(input: Input) -> Iterator[PfsInput | CronInput]:
    """The leaf inputs (pfs and cron) of an input tree, in spec order."""
    if isinstance(input, PfsInput | CronInput):
        yield input
    else:
        for child in input.inputs:
            yield from iter_inputs(child)


def pfs_inputs(input: Input) -> list[PfsInput]:
    """Every pfs input of an input tree, flattened in spec order."""
    return [leaf for leaf in iter_inputs(input) if isinstance(leaf, PfsInput)]


def input_branches(spec: PipelineSpec) -> list[tuple[str, str]]:
    """Every (repo, branch) the pipeline reads, in spec order, without repeats (cron repos too)."""
    seen: dict[tuple[str, str], None] = {}
    for leaf in iter_inputs(spec.input):
        seen.setdefault((leaf.repo, leaf.branch), None)
    return list(seen)


def _check_unique_names(input: Input) -> None:
    first_at: dict[str, int] = {}
    leaves = list(iter_inputs(input))
    for index, leaf in enumerate(leaves):
        if leaf.name in first_at:
            where = _leaf_path(input, index)
            hint = f"set {where}.name" if isinstance(leaf, PfsInput) else f"rename {where}.name"
            _fail(
                "",
                f"input names must be unique; {leaf.name!r} appears twice — {hint}",
                field_path=f"{where}.name",
            )
        first_at[leaf.name] = index


def _leaf_path(input: Input, index: int) -> str:
    """The field path of the index-th leaf of ``input``."""

    def walk(node: Input, path: str) -> Iterator[str]:
        if isinstance(node, PfsInput):
            yield f"{path}.pfs"
        elif isinstance(node, CronInput):
            yield f"{path}.cron"
        else:
            kind = {
                CrossInput: "cross",
                UnionInput: "union",
                JoinInput: "join",
                GroupInput: "group",
            }[type(node)]
            for i, child in enumerate(node.inputs):
                yield from walk(child, f"{path}.{kind}[{i}]")

    return list(walk(input, "input"))[index]


# --- fingerprint and JSON -------------------------------------------------------------------

_FINGERPRINT_VERSION = "tusk-transform-v1"


def transform_fingerprint(transform: Transform) -> str:
    """BLAKE3 hex over what decides a datum's output: cmd, stdin, env and image.

    ``err_cmd``/``err_stdin`` are left out: they only decide whether a failed datum may be
    ignored, never what a successful datum wrote, so changing them reprocesses nothing.
    """
    body = {
        "v": _FINGERPRINT_VERSION,
        "cmd": list(transform.cmd),
        "stdin": list(transform.stdin),
        "env": dict(sorted(transform.env.items())),
        "image": transform.image,
    }
    return blake3.blake3(json.dumps(body, sort_keys=True).encode()).hexdigest()


def input_to_json(input: Input) -> dict[str, Any]:
    """A typed input tree back in Pachyderm's JSON form, defaults spelled out."""
    if isinstance(input, PfsInput):
        pfs: dict[str, Any] = {
            "name": input.name,
            "repo": input.repo,
            "branch": input.branch,
            "glob": input.glob,
        }
        for key in ("commit", "join_on", "group_by"):
            if getattr(input, key) is not None:
                pfs[key] = getattr(input, key)
        for key in ("outer_join", "lazy", "empty_files"):
            if getattr(input, key):
                pfs[key] = True
        return {"pfs": pfs}
    if isinstance(input, CronInput):
        cron: dict[str, Any] = {"name": input.name, "repo": input.repo, "spec": input.spec}
        if input.overwrite:
            cron["overwrite"] = True
        if input.start is not None:
            cron["start"] = input.start.isoformat().replace("+00:00", "Z")
        return {"cron": cron}
    kind = {CrossInput: "cross", UnionInput: "union", JoinInput: "join", GroupInput: "group"}[
        type(input)
    ]
    return {kind: [input_to_json(child) for child in input.inputs]}


def _resources_to_json(res: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.cpu is not None:
        out["cpu"] = res.cpu
    if res.memory is not None:
        out["memory"] = res.memory
    if res.gpu is not None:
        out["gpu"] = {"type": res.gpu.type, "number": res.gpu.number}
    if res.disk is not None:
        out["disk"] = res.disk
    return out


def spec_to_json(spec: PipelineSpec) -> dict[str, Any]:
    """The spec in Pachyderm's field names with defaults spelled out (inspect/API output).

    ``parse_pipeline_spec(spec_to_json(s))`` gives back ``s``.
    """
    transform: dict[str, Any] = {"cmd": list(spec.transform.cmd)}
    optional: list[tuple[str, Any]] = [
        ("image", spec.transform.image),
        ("stdin", list(spec.transform.stdin)),
        ("env", dict(spec.transform.env)),
        ("err_cmd", list(spec.transform.err_cmd)),
        ("err_stdin", list(spec.transform.err_stdin)),
    ]
    transform.update((key, value) for key, value in optional if value)
    out: dict[str, Any] = {"pipeline": {"name": spec.name}}
    if spec.description:
        out["description"] = spec.description
    out["transform"] = transform
    out["input"] = input_to_json(spec.input)
    out["parallelism_spec"] = {"constant": spec.parallelism}
    out["datum_tries"] = spec.datum_tries
    for key in ("datum_timeout", "job_timeout"):
        seconds = getattr(spec, key)
        if seconds is not None:
            out[key] = format_duration(seconds)
    out["output_branch"] = spec.output_branch
    out["reprocess_spec"] = spec.reprocess_spec
    for key in ("resource_requests", "resource_limits"):
        res = getattr(spec, key)
        if res is not None:
            out[key] = _resources_to_json(res)
    return out


_T = TypeVar("_T")


def parse_pipeline_specs(text: str) -> list[PipelineSpec]:
    """Every pipeline spec in a file's text (see ``load_spec_documents``), each validated.

    With several documents, an error names which one (``document 2: …``).
    """
    docs = load_spec_documents(text)
    if len(docs) == 1:
        return [parse_pipeline_spec(docs[0])]
    return [_in_document(i, parse_pipeline_spec, doc) for i, doc in enumerate(docs, 1)]


def _in_document(number: int, fn: Callable[[dict[str, Any]], _T], doc: dict[str, Any]) -> _T:
    try:
        return fn(doc)
    except InvalidArgument as exc:
        rest = exc.message.removeprefix("pipeline spec: ")
        raise InvalidArgument(
            f"pipeline spec: document {number}: {rest}", **exc.details, document=number
        ) from None
