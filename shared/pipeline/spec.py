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

from shared.api.names import COMMIT_ID_RE, check_name
from shared.api.secrets import check_secret_key, check_secret_name
from shared.pipeline.durations import format_duration, parse_cron_spec, parse_duration
from shared.pipeline.glob import compile_glob
from shared.platform.documents import load_documents
from shared.platform.errors import InvalidArgument

DEFAULT_BRANCH = "master"
DEFAULT_DATUM_TRIES = 3
REPROCESS_SPECS = ("until_success", "every_job")
# /pfs/out is the datum's output directory, so no input may be called "out".
RESERVED_INPUT_NAMES = frozenset({"out"})

DEFAULT_PROJECT = "default"
# Exit codes a command can return; accept_return_code lists some of them.
_MAX_EXIT_CODE = 255
# Numeric user and group ids the sandbox can switch to (2**32 - 1 is "no id" to the kernel).
_MAX_ID = 2**32 - 2

# The fields each kind of spec object takes, in Pachyderm's proto names; every field is
# also accepted in its protojson name (lowerCamelCase: ``join_on`` → ``joinOn``).
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
    "pipeline": ("name", "project"),
    "project": ("name",),
    "transform": (
        "cmd",
        "stdin",
        "env",
        "err_cmd",
        "err_stdin",
        "image",
        "image_pull_secrets",
        "accept_return_code",
        "working_dir",
        "user",
        "secrets",
        "datum_batching",
    ),
    "secret": ("name", "key", "env_var", "mount_path"),
    "input": ("pfs", "cross", "union", "join", "group", "cron"),
    "pfs": (
        "name",
        "project",
        "repo",
        "branch",
        "commit",
        "glob",
        "join_on",
        "group_by",
        "outer_join",
        "lazy",
        "empty_files",
        "trigger",
    ),
    "trigger": ("branch", "all", "cron_spec", "rate_limit_spec", "size", "commits"),
    "cron": ("name", "project", "repo", "spec", "overwrite", "start"),
    "parallelism_spec": ("constant",),
    "resources": ("cpu", "memory", "gpu", "disk"),
    "gpu": ("type", "number"),
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Pachyderm fields Tusk knows but does not implement: refused with a clearer word than
# "unknown field", so a user porting a spec knows it is a gap, not a typo.
# docs/pipeline-spec.md says why for each.
_UNSUPPORTED: dict[str, frozenset[str]] = {
    "": _words(
        """egress spout service s3_out autoscaling pod_spec pod_patch scheduling_spec
        sidecar_resource_limits sidecar_resource_requests datum_set_spec tolerations metadata
        salt spec_commit update reprocess tf_job determined max_queue_size chunk_spec standby
        cache_size enable_stats maximum_expected_uptime dry_run"""
    ),
    "transform": _words("debug dockerfile memory_volume"),
    "pfs": _words("s3 repo_type reference propagation_spec"),
    "cron": _words("commit"),
    "input": _words("git"),
}


def json_name(proto_name: str) -> str:
    """protojson's name for a proto field: lowerCamelCase (``parallelism_spec`` →
    ``parallelismSpec``), as Pachyderm's parser accepts besides the proto name."""
    head, *rest = proto_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _spellings(kind: str) -> dict[str, str]:
    """Every accepted spelling of ``kind``'s fields (known and unsupported) → proto name."""
    names = (*_FIELDS.get(kind, ()), *_UNSUPPORTED.get(kind, ()))
    out = {name: name for name in names}
    out.update((json_name(name), name) for name in names)
    return out


_SPELLINGS: dict[str, dict[str, str]] = {kind: _spellings(kind) for kind in _FIELDS}


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
    """What runs for each datum. ``image``: the pod's image on Kubernetes; local workers
    pull it and run in its root (docs/images.md), with registry logins from the Tusk
    secrets ``image_pull_secrets`` names (each holding a ``.dockerconfigjson``).

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
    image_pull_secrets: tuple[str, ...] = ()
    accept_return_code: tuple[int, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    secrets: tuple[SecretUse, ...] = ()
    # Pachyderm's datum batching: ``cmd`` starts once for many datums and asks for each
    # with ``tusk next datum`` (docs/pipeline-spec.md).
    datum_batching: bool = False


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


def load_spec_documents(text: str) -> list[dict[str, Any]]:
    """The pipeline spec objects in ``text``: JSON (an object, an array of objects, or objects
    one after another) or YAML (documents separated by ``---``). Malformed input raises
    ``InvalidArgument`` naming the line and column."""
    out: list[dict[str, Any]] = []
    for number, doc in enumerate(load_documents(text, "pipeline spec"), 1):
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
    """One spec object being read. Fields are looked up by proto name whichever way the
    user spelled them (``join_on`` or ``joinOn``); paths in errors use the user's spelling.
    Unknown keys are refused at once (so a typo is reported before the "required" error it
    causes); typed getters know the field path."""

    def __init__(self, value: Any, path: str, kind: str) -> None:
        if not isinstance(value, dict):
            _fail(path, f"expected an object, got {_type_name(value)}")
        self.path = path
        self.data: dict[str, Any] = {}
        # proto name → the key as the user wrote it
        self.spelled: dict[str, str] = {}
        for key, item in value.items():
            name = self._field_name(key, kind)
            if name in self.spelled:
                _fail(
                    path,
                    f"{self.spelled[name]!r} and {key!r} are two spellings of one field; "
                    "give it once",
                    field_path=_join(path, key),
                )
            self.spelled[name] = key
            self.data[name] = item

    def _field_name(self, key: Any, kind: str) -> str:
        if not isinstance(key, str):
            _fail(self.path, f"field names must be strings, got {key!r}")
        spellings = _SPELLINGS[kind]
        name = spellings.get(key)
        if name is None:
            hint = difflib.get_close_matches(key, list(spellings), n=1, cutoff=0.6)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            _fail(self.path, f"unknown field {key!r}{suggestion}", field_path=_join(self.path, key))
        if name in _UNSUPPORTED.get(kind, ()):
            _fail(
                self.path,
                f"{key!r} is a Pachyderm field that Tusk does not support",
                field_path=_join(self.path, key),
            )
        return name

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def at(self, key: str) -> str:
        """The path of field ``key`` (a proto name), spelled as the user spelled it."""
        return _join(self.path, self.spelled.get(key, key))

    def child(self, key: str, kind: str) -> _Obj:
        """The object in field ``key``, read as a ``kind``."""
        return _Obj(self.raw(key), self.at(key), kind)

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
        number = _whole_number(self.at(key), value)
        if number < minimum:
            _fail(self.at(key), f"must be at least {minimum}, got {number}")
        return number

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

    def items(self, key: str) -> list[tuple[str, Any]]:
        """(path, value) of each element of the list in field ``key`` (none if unset)."""
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            _fail(self.at(key), f"expected a list, got {_type_name(value)}")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]


_WHOLE_NUMBER_TEXT = re.compile(r"^-?[0-9]+$")


def _whole_number(path: str, value: Any) -> int:
    """An integer field's value. protojson also takes 64-bit integers as decimal strings
    (``"3"``), as Pachyderm's own JSON output writes them, so those are read too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _WHOLE_NUMBER_TEXT.match(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected a whole number, got {_type_name(value)} {value!r}")
    return value


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
    pipeline = top.child("pipeline", "pipeline")
    name = _checked_name(pipeline.at("name"), "pipeline", pipeline.req_string("name"))
    if pipeline.has("project"):
        _project_object(pipeline)
    description = top.string("description", default="") or ""
    if not top.has("transform"):
        _fail("transform", "required")
    transform = _parse_transform(top.child("transform", "transform"))
    if not top.has("input"):
        _fail("input", "required")
    parsed_input = _parse_input(top.raw("input"), top.at("input"), name, None)
    _check_unique_names(parsed_input)
    spec = PipelineSpec(
        name=name,
        description=description,
        transform=transform,
        input=parsed_input,
        parallelism=_parallelism(top),
        datum_tries=top.integer("datum_tries", DEFAULT_DATUM_TRIES, 1),
        datum_timeout=_timeout(top, "datum_timeout"),
        job_timeout=_timeout(top, "job_timeout"),
        output_branch=_checked_name(
            top.at("output_branch"),
            "branch",
            top.string("output_branch", default=DEFAULT_BRANCH) or DEFAULT_BRANCH,
        ),
        reprocess_spec=_reprocess_spec(top),
        resource_requests=_resources(top, "resource_requests"),
        resource_limits=_resources(top, "resource_limits"),
    )
    return replace(spec, raw=spec_to_json(spec))


def _parallelism(top: _Obj) -> int:
    if not top.has("parallelism_spec"):
        return 1
    return top.child("parallelism_spec", "parallelism_spec").integer("constant", 1, 1)


_PROJECTS_UNSUPPORTED = "projects are not supported yet; use project 'default' or leave it out"


def _project_object(pipeline: _Obj) -> None:
    """``pipeline.project``: ``{"name": "default"}`` (or no name) is the only project."""
    if not isinstance(pipeline.raw("project"), dict):
        found = _type_name(pipeline.raw("project"))
        _fail(pipeline.at("project"), f"expected an object like {{'name': 'default'}}, got {found}")
    project = pipeline.child("project", "project")
    _project_name(project.at("name"), project.raw("name"))


def _project_name(path: str, value: Any) -> None:
    """An input's ``project`` (a name): only the default project exists."""
    if value is None or value == "":
        return
    if not isinstance(value, str):
        _fail(path, f"expected a project name, got {_type_name(value)} {value!r}")
    if value != DEFAULT_PROJECT:
        _fail(path, f"{value!r}: {_PROJECTS_UNSUPPORTED}")


# --- transform ----------------------------------------------------------------------------

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _parse_transform(obj: _Obj) -> Transform:
    transform = Transform(
        cmd=obj.strings("cmd", required=True),
        stdin=obj.strings("stdin"),
        env=_env(obj),
        err_cmd=obj.strings("err_cmd"),
        err_stdin=obj.strings("err_stdin"),
        image=obj.string("image"),
        image_pull_secrets=obj.strings("image_pull_secrets"),
        accept_return_code=_accept_return_codes(obj),
        working_dir=_working_dir(obj),
        user=_user(obj),
        secrets=tuple(_secret_use(path, value) for path, value in obj.items("secrets")),
        datum_batching=obj.boolean("datum_batching"),
    )
    if transform.err_stdin and not transform.err_cmd:
        _fail(obj.at("err_stdin"), "needs err_cmd")
    if transform.datum_batching and transform.err_cmd:
        _fail(obj.at("err_cmd"), "is not supported with datum_batching yet")
    _check_secret_targets(obj, transform)
    return transform


def _env(obj: _Obj) -> dict[str, str]:
    value = obj.raw("env")
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(obj.at("env"), f"expected an object of strings, got {_type_name(value)}")
    env: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            _fail(obj.at("env"), f"invalid variable name {key!r}")
        if not isinstance(text, str):
            _fail(
                f"{obj.at('env')}.{key}",
                f"expected a string, got {_type_name(text)} {text!r} (quote it in YAML)",
            )
        env[key] = text
    return env


def _accept_return_codes(obj: _Obj) -> tuple[int, ...]:
    codes: list[int] = []
    for path, value in obj.items("accept_return_code"):
        code = _whole_number(path, value)
        if not 0 <= code <= _MAX_EXIT_CODE:
            _fail(path, f"an exit code is 0-{_MAX_EXIT_CODE}, got {code}")
        codes.append(code)
    return tuple(codes)


def _working_dir(obj: _Obj) -> str | None:
    path = obj.string("working_dir")
    if path is None:
        return None
    if not path.startswith("/") or "\x00" in path:
        _fail(obj.at("working_dir"), f"expected an absolute path, e.g. '/pfs', got {path!r}")
    if ".." in path.split("/"):
        _fail(obj.at("working_dir"), f"'..' is not allowed in {path!r}")
    return path


_USER_RE = re.compile(r"^([0-9]+)(?::([0-9]+))?$")


def _user(obj: _Obj) -> str | None:
    """``uid``, ``uid:gid`` or ``root``. Names are refused: the sandbox has no user
    database to look them up in (an image's /etc/passwd is not read)."""
    user = obj.string("user")
    if user is None or user == "root":
        return user
    match = _USER_RE.match(user)
    if match is None:
        _fail(
            obj.at("user"),
            f"{user!r}: give a numeric id ('1000' or '1000:1000') or 'root'; "
            "user names cannot be looked up",
        )
    for number in match.groups():
        if number is not None and int(number) > _MAX_ID:
            _fail(obj.at("user"), f"id {number} is out of range 0-{_MAX_ID}")
    return user


def _secret_use(path: str, value: Any) -> SecretUse:
    obj = _Obj(value, path, "secret")
    name = obj.req_string("name")
    try:
        check_secret_name(name)
    except InvalidArgument as exc:
        _fail(obj.at("name"), exc.message)
    use = SecretUse(
        name=name,
        key=obj.string("key"),
        env_var=obj.string("env_var"),
        mount_path=obj.string("mount_path"),
    )
    _check_secret_use(obj, use)
    return use


def _check_secret_use(obj: _Obj, use: SecretUse) -> None:
    if (use.env_var is None) == (use.mount_path is None):
        _fail(obj.path, "give exactly one of env_var (with key) or mount_path")
    if use.env_var is not None:
        if not _ENV_NAME_RE.match(use.env_var):
            _fail(obj.at("env_var"), f"invalid variable name {use.env_var!r}")
        if use.key is None:
            _fail(obj.at("key"), "required with env_var: the secret's key to put in it")
        try:
            check_secret_key(use.key)
        except InvalidArgument as exc:
            _fail(obj.at("key"), exc.message)
        return
    assert use.mount_path is not None
    if use.key is not None:
        _fail(obj.at("key"), "only used with env_var; mount_path mounts every key as a file")
    mount = use.mount_path.rstrip("/") or "/"
    if not mount.startswith("/") or ".." in mount.split("/") or "\x00" in mount:
        _fail(obj.at("mount_path"), f"expected an absolute path, got {use.mount_path!r}")
    if mount == "/" or mount == "/pfs" or mount.startswith("/pfs/"):
        _fail(obj.at("mount_path"), f"{use.mount_path!r} would hide the root or /pfs")


def _check_secret_targets(obj: _Obj, transform: Transform) -> None:
    """No two secrets (or a secret and ``env``) may set one variable or share a mount."""
    seen: set[str] = set(transform.env)
    for i, use in enumerate(transform.secrets):
        target = use.env_var or (use.mount_path or "").rstrip("/")
        if target in seen:
            _fail(f"{obj.at('secrets')}[{i}]", f"{target!r} is already set by env or a secret")
        seen.add(target)


# --- inputs -------------------------------------------------------------------------------

_INPUT_KINDS = ("pfs", "cross", "union", "join", "group", "cron")


def _parse_input(value: Any, path: str, pipeline: str, parent: str | None) -> Input:
    obj = _Obj(value, path, "input")
    present = [kind for kind in _INPUT_KINDS if obj.has(kind)]
    if len(present) != 1:
        found = f"got {', '.join(present)}" if present else "got none"
        _fail(path, f"expected exactly one of {', '.join(_INPUT_KINDS)}; {found}")
    kind = present[0]
    sub = obj.at(kind)
    if kind == "pfs":
        return _parse_pfs(obj.child(kind, "pfs"), pipeline, parent)
    if parent in ("join", "group"):
        _fail(sub, f"a {parent} input takes only pfs inputs")
    if kind == "cron":
        return _parse_cron(obj.child(kind, "cron"), pipeline)
    items = obj.data[kind]
    if not isinstance(items, list):
        _fail(sub, f"expected a list of inputs, got {_type_name(items)}")
    if not items:
        _fail(sub, "needs at least one input")
    children = [_parse_input(item, f"{sub}[{i}]", pipeline, kind) for i, item in enumerate(items)]
    if kind == "cross":
        return CrossInput(tuple(children))
    if kind == "union":
        return UnionInput(tuple(children))
    pfs_children = tuple(child for child in children if isinstance(child, PfsInput))
    return JoinInput(pfs_children) if kind == "join" else GroupInput(pfs_children)


def _parse_pfs(obj: _Obj, pipeline: str, parent: str | None) -> PfsInput:
    _project_name(obj.at("project"), obj.raw("project"))
    repo = _checked_name(obj.at("repo"), "repo", obj.req_string("repo"))
    if repo == pipeline:
        _fail(obj.at("repo"), f"a pipeline cannot read its own output repo {repo!r}")
    glob_text = obj.req_string("glob")
    try:
        groups = compile_glob(glob_text).group_count
    except InvalidArgument as exc:
        _fail(obj.at("glob"), exc.message)
    name = _input_name(obj, obj.string("name", default=repo) or repo)
    branch = _checked_name(
        obj.at("branch"), "branch", obj.string("branch", default=DEFAULT_BRANCH) or DEFAULT_BRANCH
    )
    commit = obj.string("commit")
    if commit is not None and not COMMIT_ID_RE.match(commit):
        _fail(obj.at("commit"), f"invalid commit id {commit!r}: expected 32 hex digits")
    outer_join = obj.boolean("outer_join")
    if outer_join and parent != "join":
        _fail(obj.at("outer_join"), "only meaningful for an input inside a join")
    return PfsInput(
        name=name,
        repo=repo,
        glob=glob_text,
        branch=branch,
        commit=commit,
        lazy=obj.boolean("lazy"),
        empty_files=obj.boolean("empty_files"),
        join_on=_match_key(obj, "join_on", "join", parent, groups),
        group_by=_match_key(obj, "group_by", "group", parent, groups),
        outer_join=outer_join,
        trigger=_trigger(obj.child("trigger", "trigger"), branch) if obj.has("trigger") else None,
    )


def _input_name(obj: _Obj, name: str) -> str:
    name = _checked_name(obj.at("name"), "input", name)
    if name in RESERVED_INPUT_NAMES:
        _fail(obj.at("name"), f"{name!r} is reserved for the output directory /pfs/out")
    return name


def _match_key(obj: _Obj, key: str, kind: str, parent: str | None, groups: int) -> str | None:
    """``join_on`` (inside a join) or ``group_by`` (inside a group): a template over the
    glob's capture groups, required there and refused elsewhere."""
    text = obj.string(key)
    if text is None:
        if parent == kind:
            _fail(obj.at(key), f"required for every input of a {kind}")
        return None
    if parent != kind:
        _fail(obj.at(key), f"only meaningful for an input inside a {kind}")
    try:
        refs = template_groups(text)
    except InvalidArgument as exc:
        _fail(obj.at(key), exc.message)
    if not refs:
        _fail(obj.at(key), f"{text!r} refers to no capture group; use e.g. '$1'")
    for ref in refs:
        if ref > groups:
            have = f"has {groups}" if groups else "has none; add one, e.g. '/(*).csv'"
            glob_text = obj.raw("glob")
            _fail(obj.at(key), f"'${ref}' needs capture group {ref}, but glob {glob_text!r} {have}")
    return text


def _trigger(obj: _Obj, input_branch: str) -> BranchTrigger:
    """``input.pfs.trigger``: when the input branch moves to the head of ``branch``."""
    branch = _checked_name(obj.at("branch"), "branch", obj.req_string("branch"))
    if branch == input_branch:
        _fail(obj.at("branch"), f"must differ from the input's branch {input_branch!r}")
    size_text = obj.string("size")
    size = _trigger_size(obj.at("size"), size_text) if size_text is not None else None
    commits = obj.integer("commits", 0, 0) or None
    cron = _trigger_schedule(obj, "cron_spec")
    rate_limit = _trigger_schedule(obj, "rate_limit_spec")
    if cron is not None and (size is not None or commits is not None or rate_limit is not None):
        _fail(
            obj.at("cron_spec"),
            "fires on its schedule alone; to combine a schedule with size or commits "
            "use rate_limit_spec",
        )
    schedule = cron or rate_limit
    if size is None and commits is None and schedule is None:
        _fail(obj.path, "needs a condition: size, commits, cron_spec or rate_limit_spec")
    return BranchTrigger(branch, size=size, commits=commits, cron=schedule, all=obj.boolean("all"))


def _trigger_schedule(obj: _Obj, key: str) -> str | None:
    spec = obj.string(key)
    if spec is not None:
        try:
            parse_cron_spec(spec)
        except InvalidArgument as exc:
            _fail(obj.at(key), exc.message)
    return spec


# A trigger's size, as Pachyderm reads it (go-units): "1MB", "10K", "512 kb", "2GiB", "100".
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+) ?(?:([kmgtp])(i)?b?|b)?$", re.IGNORECASE)
_SIZE_PREFIXES = "kmgtp"


def parse_size(text: str) -> int:
    """Bytes in a human size: ``K``/``KB`` = 1000, ``Ki``/``KiB`` = 1024, up to ``P``; a bare
    number or ``B`` is bytes. Raises ``InvalidArgument`` otherwise."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise InvalidArgument(f"invalid size {text!r}: expected e.g. '100', '10K', '1MB' or '2GiB'")
    number, prefix, binary = match.groups()
    power = _SIZE_PREFIXES.index(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def format_size(size: int) -> str:
    """The shortest exact form of ``size`` that ``parse_size`` reads back (``"1MB"``)."""
    for power in range(len(_SIZE_PREFIXES), 0, -1):
        letter = _SIZE_PREFIXES[power - 1].upper()
        for base, suffix in ((1024, f"{letter}iB"), (1000, f"{letter}B")):
            if size % base**power == 0:
                return f"{size // base**power}{suffix}"
    return str(size)


def _trigger_size(path: str, text: str) -> int:
    try:
        size = parse_size(text)
    except InvalidArgument as exc:
        _fail(path, exc.message)
    if size <= 0:
        _fail(path, f"must be more than 0 bytes, got {text!r}")
    return size


def _parse_cron(obj: _Obj, pipeline: str) -> CronInput:
    _project_name(obj.at("project"), obj.raw("project"))
    name = _input_name(obj, obj.req_string("name"))
    spec = obj.req_string("spec")
    try:
        parse_cron_spec(spec)
    except InvalidArgument as exc:
        _fail(obj.at("spec"), exc.message)
    default_repo = f"{pipeline}_{name}"
    repo = _checked_name(obj.at("repo"), "repo", obj.string("repo", default=default_repo) or "")
    return CronInput(
        name=name,
        repo=repo,
        spec=spec,
        overwrite=obj.boolean("overwrite"),
        start=_cron_start(obj),
    )


def _cron_start(obj: _Obj) -> datetime | None:
    text = obj.string("start")
    if text is None:
        return None
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        start = None
    if start is None or start.tzinfo is None:
        _fail(
            obj.at("start"),
            f"expected an RFC 3339 time with a zone, e.g. '2024-01-01T00:00:00Z', got {text!r}",
        )
    return start.astimezone(UTC)


# --- the rest of the top level --------------------------------------------------------------


def _timeout(top: _Obj, key: str) -> float | None:
    text = top.string(key)
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except InvalidArgument as exc:
        _fail(top.at(key), exc.message)
    if seconds <= 0:
        _fail(top.at(key), f"must be positive, got {text!r}")
    return seconds


def _reprocess_spec(top: _Obj) -> str:
    value = top.string("reprocess_spec", default=REPROCESS_SPECS[0]) or REPROCESS_SPECS[0]
    if value not in REPROCESS_SPECS:
        _fail(
            top.at("reprocess_spec"),
            f"expected one of {', '.join(REPROCESS_SPECS)}, got {value!r}",
        )
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
    obj = top.child(key, "resources")
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
        gobj = obj.child("gpu", "gpu")
        gpu = Gpu(gobj.req_string("type"), gobj.integer("number", 1, 1))
    return Resources(cpu=_cpu(obj), memory=quantities["memory"], gpu=gpu, disk=quantities["disk"])


def _cpu(obj: _Obj) -> float | None:
    value = obj.raw("cpu")
    if value is None:
        return None
    cpu = _float_text(value) if isinstance(value, str) else value
    if isinstance(cpu, bool) or not isinstance(cpu, int | float):
        _fail(obj.at("cpu"), f"expected a number of cores, got {_type_name(value)} {value!r}")
    if cpu < 0:
        _fail(obj.at("cpu"), f"must not be negative, got {value}")
    return float(cpu)


def _float_text(text: str) -> float | None:
    """A number written as a string, as protojson allows for a float field ("0.5")."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


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
    """BLAKE3 hex over what decides a datum's output: cmd, stdin, env, image and, when set,
    accept_return_code, working_dir, user and the secrets used (names, keys and where they
    go — not their values, so rotating a secret's value reprocesses nothing).

    ``err_cmd``/``err_stdin`` are left out: they only decide whether a failed datum may be
    ignored, never what a successful datum wrote, so changing them reprocesses nothing.
    The fields added later enter only when set, so a transform without them keeps the
    fingerprint (and skipped datums) it had before they existed.
    """
    body: dict[str, Any] = {
        "v": _FINGERPRINT_VERSION,
        "cmd": list(transform.cmd),
        "stdin": list(transform.stdin),
        "env": dict(sorted(transform.env.items())),
        "image": transform.image,
    }
    body.update(_transform_extras(transform))
    return blake3.blake3(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _transform_extras(transform: Transform) -> list[tuple[str, Any]]:
    """The optional transform fields in JSON form, only those that are set."""
    extras: list[tuple[str, Any]] = [
        ("accept_return_code", list(transform.accept_return_code)),
        ("working_dir", transform.working_dir),
        ("user", transform.user),
        ("secrets", [_secret_use_to_json(use) for use in transform.secrets]),
    ]
    return [(key, value) for key, value in extras if value]


def _secret_use_to_json(use: SecretUse) -> dict[str, str]:
    out = {"name": use.name}
    for key in ("key", "env_var", "mount_path"):
        if getattr(use, key) is not None:
            out[key] = getattr(use, key)
    return out


def _pfs_to_json(input: PfsInput) -> dict[str, Any]:
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
    if input.trigger is not None:
        pfs["trigger"] = _trigger_to_json(input.trigger)
    return pfs


def _trigger_to_json(trigger: BranchTrigger) -> dict[str, Any]:
    out: dict[str, Any] = {"branch": trigger.branch}
    if trigger.all:
        out["all"] = True
    if trigger.size is not None:
        out["size"] = format_size(trigger.size)
    if trigger.commits is not None:
        out["commits"] = trigger.commits
    if trigger.cron is not None:
        # A schedule alone is Pachyderm's cron_spec; with other conditions, rate_limit_spec.
        alone = trigger.size is None and trigger.commits is None
        out["cron_spec" if alone else "rate_limit_spec"] = trigger.cron
    return out


def input_to_json(input: Input) -> dict[str, Any]:
    """A typed input tree back in Pachyderm's JSON form, defaults spelled out."""
    if isinstance(input, PfsInput):
        return {"pfs": _pfs_to_json(input)}
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


def _transform_to_json(transform: Transform) -> dict[str, Any]:
    out: dict[str, Any] = {"cmd": list(transform.cmd)}
    optional: list[tuple[str, Any]] = [
        ("image", transform.image),
        ("image_pull_secrets", list(transform.image_pull_secrets)),
        ("stdin", list(transform.stdin)),
        ("env", dict(transform.env)),
        ("err_cmd", list(transform.err_cmd)),
        ("err_stdin", list(transform.err_stdin)),
        # Not in the fingerprint (_transform_extras): it changes how cmd is started, not
        # what a datum's output is.
        ("datum_batching", transform.datum_batching),
    ]
    out.update((key, value) for key, value in optional if value)
    out.update(_transform_extras(transform))
    return out


def spec_to_json(spec: PipelineSpec) -> dict[str, Any]:
    """The spec in Pachyderm's proto field names with defaults spelled out (inspect/API
    output), whichever spelling it was written in.

    ``parse_pipeline_spec(spec_to_json(s))`` gives back ``s``.
    """
    out: dict[str, Any] = {"pipeline": {"name": spec.name}}
    if spec.description:
        out["description"] = spec.description
    out["transform"] = _transform_to_json(spec.transform)
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
