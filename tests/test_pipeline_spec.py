"""Pipeline specs: reading JSON/YAML, validation with field paths, defaults, durations, cron."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import blake3
import pytest

from shared.pipeline.durations import format_duration, parse_cron_spec, parse_duration
from shared.pipeline.spec import (
    BranchTrigger,
    CronInput,
    CrossInput,
    GroupInput,
    JoinInput,
    PfsInput,
    PipelineSpec,
    Resources,
    SecretUse,
    Transform,
    UnionInput,
    expand_template,
    format_size,
    input_branches,
    json_name,
    load_spec_documents,
    parse_pipeline_spec,
    parse_pipeline_specs,
    parse_quantity,
    parse_size,
    pfs_inputs,
    spec_to_json,
    template_groups,
    transform_fingerprint,
)
from shared.platform.errors import InvalidArgument


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "pipeline": {"name": "edges"},
        "transform": {"cmd": ["python3", "/edges.py"]},
        "input": {"pfs": {"repo": "images", "glob": "/*"}},
    }
    spec.update(overrides)
    return spec


def pfs(repo: str, glob: str = "/*", **extra: Any) -> dict[str, Any]:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


# --- reading documents -----------------------------------------------------------------------


YAML_TWO = """
pipeline:
  name: first
transform:
  cmd: [sh]
input:
  pfs: {repo: a, glob: "/*"}
---
pipeline: {name: second}
transform: {cmd: [sh]}
input: {pfs: {repo: first, glob: /}}
---
"""


def test_yaml_documents_separated_by_dashes_are_all_read() -> None:
    docs = load_spec_documents(YAML_TWO)
    assert [d["pipeline"]["name"] for d in docs] == ["first", "second"]
    specs = parse_pipeline_specs(YAML_TWO)
    assert [s.name for s in specs] == ["first", "second"]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(base_spec()),
        json.dumps([base_spec(), base_spec(pipeline={"name": "two"})]),
        json.dumps(base_spec()) + "\n" + json.dumps(base_spec(pipeline={"name": "two"})),
        "\ufeff  " + json.dumps(base_spec(), indent=2),
        json.dumps(base_spec(), indent=2) + "\n---\n" + json.dumps(base_spec(), indent=2) + "\n",
    ],
    ids=["object", "array", "concatenated", "bom-indented", "dashes-between"],
)
def test_json_forms_are_read(text: str) -> None:
    docs = load_spec_documents(text)
    assert docs[0] == base_spec()
    assert all(parse_pipeline_spec(doc).transform.cmd == ("python3", "/edges.py") for doc in docs)


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(InvalidArgument, match=r"invalid JSON at line 3, column \d+"):
        load_spec_documents('{\n  "pipeline": {"name": "x"},\n  "transform": }\n')


def test_malformed_yaml_names_line_and_column() -> None:
    with pytest.raises(InvalidArgument, match=r"invalid YAML at line 4, column 6"):
        load_spec_documents("pipeline:\n  name: x\n  cmd: [a, b\ninput: 1\n")


@pytest.mark.parametrize(
    "text",
    ['{"pipeline": {"name": "a"}, "pipeline": {"name": "b"}}', "pipeline: 1\npipeline: 2\n"],
)
def test_duplicate_keys_are_refused_not_silently_dropped(text: str) -> None:
    with pytest.raises(InvalidArgument, match="duplicate key 'pipeline'"):
        load_spec_documents(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "no pipeline spec"), ("---\n", "no pipeline spec"), ("[1]", "document 1 is a number")],
)
def test_empty_or_non_object_documents_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        load_spec_documents(text)


def test_yaml_timestamps_stay_strings_so_start_validates_like_json() -> None:
    text = (
        "pipeline: {name: p}\ntransform: {cmd: [sh]}\n"
        "input: {cron: {name: tick, spec: '@every 1m', start: 2024-05-01T10:00:00Z}}\n"
    )
    spec = parse_pipeline_specs(text)[0]
    assert isinstance(spec.input, CronInput)
    assert spec.input.start == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_an_error_in_a_later_document_names_the_document() -> None:
    text = json.dumps(base_spec()) + json.dumps(base_spec(datum_tries=0))
    with pytest.raises(InvalidArgument, match="document 2: datum_tries: must be at least 1"):
        parse_pipeline_specs(text)


# --- defaults --------------------------------------------------------------------------------


def test_defaults_are_applied_like_pachyderm() -> None:
    spec = parse_pipeline_spec(base_spec())
    assert spec == PipelineSpec(
        name="edges",
        transform=Transform(cmd=("python3", "/edges.py")),
        input=PfsInput(name="images", repo="images", glob="/*", branch="master"),
    )
    assert spec.description == ""
    assert (spec.parallelism, spec.datum_tries) == (1, 3)
    assert (spec.datum_timeout, spec.job_timeout) == (None, None)
    assert (spec.output_branch, spec.reprocess_spec) == ("master", "until_success")
    assert spec.transform.image is None and spec.transform.env == {}
    assert spec.resource_requests is None and spec.resource_limits is None


def test_every_field_is_read() -> None:
    raw = {
        "pipeline": {"name": "full"},
        "description": "all the things",
        "transform": {
            "image": "python:3.11",
            "cmd": ["python3"],
            "stdin": ["import sys", "print(1)"],
            "env": {"MODE": "fast"},
            "err_cmd": ["true"],
            "err_stdin": ["x"],
        },
        "input": {
            "cross": [
                pfs("a", "/*", name="left", branch="dev", lazy=True, empty_files=True),
                {
                    "join": [
                        pfs("b", "/(*).csv", join_on="$1", outer_join=True),
                        pfs("c", "/(*)/(*).txt", join_on="$1"),
                    ]
                },
                {"group": [pfs("d", "/(*)-*", group_by="$1", commit="ab" * 16)]},
                {"cron": {"name": "tick", "spec": "*/5 * * * *", "overwrite": True}},
            ]
        },
        "parallelism_spec": {"constant": 4},
        "datum_tries": 5,
        "datum_timeout": "1m30s",
        "job_timeout": "2h",
        "output_branch": "out-branch",
        "reprocess_spec": "every_job",
        "resource_requests": {"cpu": 0.5, "memory": "64M", "disk": "1Gi"},
        "resource_limits": {
            "cpu": 2,
            "memory": "1Gi",
            "gpu": {"type": "nvidia.com/gpu", "number": 1},
        },
    }
    spec = parse_pipeline_spec(raw)
    assert spec.description == "all the things"
    assert spec.transform == Transform(
        cmd=("python3",),
        stdin=("import sys", "print(1)"),
        env={"MODE": "fast"},
        err_cmd=("true",),
        err_stdin=("x",),
        image="python:3.11",
    )
    assert isinstance(spec.input, CrossInput)
    left, join, group, cron = spec.input.inputs
    assert left == PfsInput("left", "a", "/*", branch="dev", lazy=True, empty_files=True)
    assert isinstance(join, JoinInput) and join.inputs[0].outer_join and join.inputs[1].join_on
    assert isinstance(group, GroupInput) and group.inputs[0].commit == "ab" * 16
    assert cron == CronInput("tick", "full_tick", "*/5 * * * *", overwrite=True)
    assert (spec.parallelism, spec.datum_tries) == (4, 5)
    assert (spec.datum_timeout, spec.job_timeout) == (90.0, 7200.0)
    assert (spec.output_branch, spec.reprocess_spec) == ("out-branch", "every_job")
    assert spec.resource_requests == Resources(cpu=0.5, memory="64M", disk="1Gi")
    assert spec.resource_limits is not None and spec.resource_limits.gpu is not None
    assert spec.resource_limits.gpu.number == 1 and spec.resource_limits.cpu == 2.0
    assert input_branches(spec) == [
        ("a", "dev"),
        ("b", "master"),
        ("c", "master"),
        ("d", "master"),
        ("full_tick", "master"),
    ]
    assert [p.name for p in pfs_inputs(spec.input)] == ["left", "b", "c", "d"]
    # The normalized form round-trips, and carries Pachyderm's names with defaults filled.
    assert parse_pipeline_spec(spec.raw) == spec
    assert spec.raw["datum_timeout"] == "1m30s"
    assert spec.raw["input"]["cross"][1]["join"][0]["pfs"]["name"] == "b"


def test_spec_to_json_round_trips_and_does_not_alias_the_input() -> None:
    raw = base_spec(transform={"cmd": ["sh"], "env": {"A": "1"}})
    original = copy.deepcopy(raw)
    spec = parse_pipeline_spec(raw)
    assert raw == original
    out = spec_to_json(spec)
    assert out == spec.raw
    assert out["parallelism_spec"] == {"constant": 1} and out["datum_tries"] == 3
    assert parse_pipeline_spec(json.loads(json.dumps(out))) == spec


def test_input_branches_lists_each_branch_once_in_spec_order() -> None:
    spec = parse_pipeline_spec(
        base_spec(input={"cross": [pfs("b", name="x"), pfs("a"), pfs("b", "/", name="y")]})
    )
    assert input_branches(spec) == [("b", "master"), ("a", "master")]


# --- refusals with field paths -------------------------------------------------------------

BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("typo top", base_spec(transfrom={}), "unknown field 'transfrom' (did you mean 'transform'?)"),
    (
        "typo nested",
        base_spec(input={"pfs": {"repo": "a", "globb": "/"}}),
        "input.pfs: unknown field 'globb' (did you mean 'glob'?)",
    ),
    ("unknown no hint", base_spec(zzz=1), "unknown field 'zzz'"),
    ("unsupported", base_spec(spout={}), "'spout' is a Pachyderm field that Tusk does not support"),
    ("no name", base_spec(pipeline={}), "pipeline.name: required"),
    ("no pipeline", {"transform": {"cmd": ["a"]}}, "pipeline.name: required"),
    ("bad name", base_spec(pipeline={"name": "a b"}), "pipeline.name: invalid pipeline name"),
    ("cmd string", base_spec(transform={"cmd": "ls"}), "transform.cmd: expected a list of strings"),
    ("cmd empty", base_spec(transform={"cmd": []}), "transform.cmd: required"),
    (
        "cmd number",
        base_spec(transform={"cmd": ["sleep", 10]}),
        "transform.cmd[1]: expected a string",
    ),
    ("no transform", {"pipeline": {"name": "p"}, "input": pfs("a")}, "transform: required"),
    ("transform list", base_spec(transform=["ls"]), "transform: expected an object, got list"),
    (
        "env number",
        base_spec(transform={"cmd": ["a"], "env": {"N": 1}}),
        "transform.env.N: expected a string",
    ),
    (
        "env name",
        base_spec(transform={"cmd": ["a"], "env": {"1X": "a"}}),
        "transform.env: invalid variable name",
    ),
    (
        "err_stdin alone",
        base_spec(transform={"cmd": ["a"], "err_stdin": ["x"]}),
        "transform.err_stdin: needs err_cmd",
    ),
    (
        "image number",
        base_spec(transform={"cmd": ["a"], "image": 3}),
        "transform.image: expected a string",
    ),
    ("no input", {"pipeline": {"name": "p"}, "transform": {"cmd": ["a"]}}, "input: required"),
    ("two kinds", base_spec(input={**pfs("a"), "cross": []}), "input: expected exactly one of"),
    (
        "empty input",
        base_spec(input={}),
        "input: expected exactly one of pfs, cross, union, join, group, cron; got none",
    ),
    ("no repo", base_spec(input={"pfs": {"glob": "/"}}), "input.pfs.repo: required"),
    ("no glob", base_spec(input={"pfs": {"repo": "a"}}), "input.pfs.glob: required"),
    (
        "bad glob",
        base_spec(input={"cross": [pfs("a"), pfs("b", "/[a")]}),
        "input.cross[1].pfs.glob: invalid glob '/[a': '[' without a closing ']'",
    ),
    (
        "bad branch",
        base_spec(input=pfs("a", branch="x/y")),
        "input.pfs.branch: invalid branch name",
    ),
    ("bad commit", base_spec(input=pfs("a", commit="abc")), "input.pfs.commit: invalid commit id"),
    (
        "lazy string",
        base_spec(input=pfs("a", lazy="yes")),
        "input.pfs.lazy: expected true or false",
    ),
    ("out name", base_spec(input=pfs("a", name="out")), "input.pfs.name: 'out' is reserved"),
    (
        "own output",
        base_spec(input=pfs("edges")),
        "input.pfs.repo: a pipeline cannot read its own output repo",
    ),
    (
        "dup names",
        base_spec(input={"cross": [pfs("images"), pfs("images", "/")]}),
        "input names must be unique; 'images' appears twice — set input.cross[1].pfs.name",
    ),
    (
        "dup deep",
        base_spec(input={"union": [pfs("a"), {"cross": [pfs("b"), pfs("c", name="a")]}]}),
        "'a' appears twice — set input.union[1].cross[1].pfs.name",
    ),
    ("cross empty", base_spec(input={"cross": []}), "input.cross: needs at least one input"),
    (
        "cross object",
        base_spec(input={"cross": pfs("a")}),
        "input.cross: expected a list of inputs, got object",
    ),
    (
        "join no key",
        base_spec(input={"join": [pfs("a", "/(*)", join_on="$1"), pfs("b", "/(*)")]}),
        "input.join[1].pfs.join_on: required for every input of a join",
    ),
    (
        "join no group",
        base_spec(input={"join": [pfs("a", "/*", join_on="$1")]}),
        "input.join[0].pfs.join_on: '$1' needs capture group 1, but glob '/*' has none",
    ),
    (
        "join group 2",
        base_spec(input={"join": [pfs("a", "/(*)/*", join_on="$1-$2")]}),
        "'$2' needs capture group 2, but glob '/(*)/*' has 1",
    ),
    (
        "join no ref",
        base_spec(input={"join": [pfs("a", "/(*)", join_on="key")]}),
        "refers to no capture group",
    ),
    (
        "join bad ref",
        base_spec(input={"join": [pfs("a", "/(*)", join_on="$x")]}),
        "'$' must be followed by a capture group number",
    ),
    (
        "join_on outside",
        base_spec(input=pfs("a", "/(*)", join_on="$1")),
        "input.pfs.join_on: only meaningful for an input inside a join",
    ),
    (
        "outer outside",
        base_spec(input={"cross": [pfs("a", outer_join=True)]}),
        "input.cross[0].pfs.outer_join: only meaningful for an input inside a join",
    ),
    (
        "group_by in join",
        base_spec(input={"join": [pfs("a", "/(*)", join_on="$1", group_by="$1")]}),
        "input.join[0].pfs.group_by: only meaningful for an input inside a group",
    ),
    (
        "group no key",
        base_spec(input={"group": [pfs("a", "/(*)")]}),
        "input.group[0].pfs.group_by: required for every input of a group",
    ),
    (
        "cross in join",
        base_spec(input={"join": [{"cross": [pfs("a")]}]}),
        "input.join[0].cross: a join input takes only pfs inputs",
    ),
    (
        "cron in group",
        base_spec(input={"group": [{"cron": {"name": "t", "spec": "@hourly"}}]}),
        "input.group[0].cron: a group input takes only pfs inputs",
    ),
    ("cron no name", base_spec(input={"cron": {"spec": "@hourly"}}), "input.cron.name: required"),
    ("cron no spec", base_spec(input={"cron": {"name": "t"}}), "input.cron.spec: required"),
    (
        "cron bad spec",
        base_spec(input={"cron": {"name": "t", "spec": "61 * * * *"}}),
        "input.cron.spec: invalid cron spec '61 * * * *': minute '61': out of range 0-59",
    ),
    ("cron fields", base_spec(input={"cron": {"name": "t", "spec": "* * *"}}), "expected 5 fields"),
    (
        "cron every",
        base_spec(input={"cron": {"name": "t", "spec": "@every soon"}}),
        "invalid duration 'soon'",
    ),
    (
        "cron start",
        base_spec(input={"cron": {"name": "t", "spec": "@daily", "start": "2024-01-01"}}),
        "input.cron.start: expected an RFC 3339 time with a zone",
    ),
    (
        "cron long repo",
        base_spec(pipeline={"name": "p" * 60}, input={"cron": {"name": "tick", "spec": "@daily"}}),
        "input.cron.repo: invalid repo name",
    ),
    (
        "parallelism 0",
        base_spec(parallelism_spec={"constant": 0}),
        "parallelism_spec.constant: must be at least 1, got 0",
    ),
    (
        "parallelism text",
        base_spec(parallelism_spec={"constant": "two"}),
        "parallelism_spec.constant: expected a whole number",
    ),
    (
        "parallelism coeff",
        base_spec(parallelism_spec={"coefficient": 1}),
        "parallelism_spec: unknown field 'coefficient'",
    ),
    (
        "tries bool",
        base_spec(datum_tries=True),
        "datum_tries: expected a whole number, got boolean",
    ),
    (
        "timeout bad",
        base_spec(datum_timeout="10 minutes"),
        "datum_timeout: invalid duration '10 minutes'",
    ),
    (
        "timeout unit",
        base_spec(job_timeout="3d"),
        "job_timeout: invalid duration '3d': unknown unit 'd'",
    ),
    ("timeout neg", base_spec(job_timeout="-1s"), "job_timeout: must be positive"),
    ("timeout num", base_spec(datum_timeout=30), "datum_timeout: expected a string, got number"),
    (
        "reprocess",
        base_spec(reprocess_spec="always"),
        "reprocess_spec: expected one of until_success, every_job",
    ),
    ("output branch", base_spec(output_branch="a b"), "output_branch: invalid branch name"),
    (
        "cpu text",
        base_spec(resource_limits={"cpu": "two"}),
        "resource_limits.cpu: expected a number of cores",
    ),
    (
        "cpu negative",
        base_spec(resource_requests={"cpu": -1}),
        "resource_requests.cpu: must not be negative",
    ),
    (
        "memory",
        base_spec(resource_limits={"memory": "lots"}),
        "resource_limits.memory: invalid quantity 'lots'",
    ),
    (
        "memory number",
        base_spec(resource_limits={"memory": 64}),
        "resource_limits.memory: expected a string",
    ),
    (
        "gpu no type",
        base_spec(resource_limits={"gpu": {"number": 1}}),
        "resource_limits.gpu.type: required",
    ),
    (
        "gpu zero",
        base_spec(resource_limits={"gpu": {"type": "g", "number": 0}}),
        "resource_limits.gpu.number: must be at least 1",
    ),
    (
        "gpu typo",
        base_spec(resource_limits={"gpu": {"type": "g", "numbr": 1}}),
        "resource_limits.gpu: unknown field 'numbr' (did you mean 'number'?)",
    ),
    (
        "resource typo",
        base_spec(resource_limits={"memroy": "1G"}),
        "resource_limits: unknown field 'memroy' (did you mean 'memory'?)",
    ),
    ("description", base_spec(description=["x"]), "description: expected a string, got list"),
    ("not object", ["x"], "expected an object, got list"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [(raw, frag) for _, raw, frag in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_bad_specs_are_refused_with_field_path_and_reason(raw: Any, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(raw)
    assert info.value.message.startswith("pipeline spec: ")
    assert fragment in info.value.message


def test_the_error_carries_the_field_path_for_api_clients() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(base_spec(input={"cross": [pfs("a"), pfs("b", "/[a")]}))
    assert info.value.details["field"] == "input.cross[1].pfs.glob"
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(base_spec(input={"cross": [pfs("a"), pfs("a")]}))
    assert info.value.details["field"] == "input.cross[1].pfs.name"


def test_a_typo_is_reported_before_the_required_field_it_hides() -> None:
    with pytest.raises(InvalidArgument, match="did you mean 'cmd'"):
        parse_pipeline_spec(base_spec(transform={"cmdd": ["ls"]}))


def test_renaming_a_duplicate_input_makes_it_valid() -> None:
    spec = parse_pipeline_spec(
        base_spec(input={"cross": [pfs("images"), pfs("images", "/", name="whole")]})
    )
    assert [p.name for p in pfs_inputs(spec.input)] == ["images", "whole"]


def test_union_and_nested_combinations_are_allowed() -> None:
    spec = parse_pipeline_spec(
        base_spec(
            input={
                "cross": [
                    {"union": [pfs("a"), pfs("b")]},
                    {"join": [pfs("c", "/(*)", join_on="$1"), pfs("d", "/(*)", join_on="${1}")]},
                ]
            }
        )
    )
    assert isinstance(spec.input, CrossInput)
    assert isinstance(spec.input.inputs[0], UnionInput)
    assert isinstance(spec.input.inputs[1], JoinInput)


def test_yaml_integer_written_as_float_counts_as_whole_number() -> None:
    assert parse_pipeline_spec(base_spec(datum_tries=2.0)).datum_tries == 2


# --- templates, fingerprint, quantities -----------------------------------------------------


def test_join_templates_expand_like_go_regexp_expand() -> None:
    assert template_groups("$1-$2") == [1, 2]
    assert template_groups("${2}x$1") == [2, 1]
    assert expand_template("$1-$2", ("a", "b")) == "a-b"
    assert expand_template("${1}0$$", ("a",)) == "a0$"
    with pytest.raises(InvalidArgument):
        template_groups("$0")


def test_transform_fingerprint_covers_what_decides_the_output() -> None:
    base = Transform(cmd=("sh",), stdin=("echo 1",), env={"A": "1", "B": "2"}, image="img")
    fp = transform_fingerprint(base)
    assert fp == transform_fingerprint(
        Transform(cmd=("sh",), stdin=("echo 1",), env={"B": "2", "A": "1"}, image="img")
    )
    for changed in (
        Transform(cmd=("bash",), stdin=("echo 1",), env={"A": "1", "B": "2"}, image="img"),
        Transform(cmd=("sh",), stdin=("echo 2",), env={"A": "1", "B": "2"}, image="img"),
        Transform(cmd=("sh",), stdin=("echo 1",), env={"A": "1", "B": "3"}, image="img"),
        Transform(cmd=("sh",), stdin=("echo 1",), env={"A": "1", "B": "2"}, image="img2"),
        Transform(cmd=("sh", "echo 1"), env={"A": "1", "B": "2"}, image="img"),
    ):
        assert transform_fingerprint(changed) != fp
    # err_cmd only decides whether a failure may be ignored: it does not reprocess datums.
    assert (
        transform_fingerprint(
            Transform(
                cmd=("sh",),
                stdin=("echo 1",),
                env={"A": "1", "B": "2"},
                image="img",
                err_cmd=("true",),
            )
        )
        == fp
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64M", 64e6),
        ("1Gi", 2.0**30),
        ("512Mi", 512 * 2.0**20),
        ("1.5G", 1.5e9),
        ("1e3", 1000.0),
        ("500m", 0.5),
        ("100", 100.0),
    ],
)
def test_quantities_parse_like_kubernetes(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "1 G", "G", "1GB", "-1G", "1Gii"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid quantity"):
        parse_quantity(text)


# --- durations and cron --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("1h1m1s", 3661.0),
        ("0", 0.0),
        ("-2m", -120.0),
        ("2us", 2e-6),
        (".5s", 0.5),
    ],
)
def test_go_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1.s1", "1h 2m", "1..2s", "-"])
def test_bad_go_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90.0, "1m30s"), (7200.0, "2h"), (0.5, "0.5s"), (0.0, "0s"), (3601.0, "1h1s")],
)
def test_durations_format_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        ("@every 10s", at(2024, 1, 1, 0, 0, 5), at(2024, 1, 1, 0, 0, 15)),
        ("@every 1m30s", at(2024, 1, 1), at(2024, 1, 1, 0, 1, 30)),
        ("*/15 * * * *", at(2024, 1, 1, 0, 7), at(2024, 1, 1, 0, 15)),
        ("*/15 * * * *", at(2024, 1, 1, 0, 15), at(2024, 1, 1, 0, 30)),
        ("0 9-17 * * mon-fri", at(2024, 1, 6, 12), at(2024, 1, 8, 9)),  # Sat → Mon 9:00
        ("30 2 * * 7", at(2024, 1, 1), at(2024, 1, 7, 2, 30)),  # 7 is Sunday
        ("0 0 13 * 5", at(2024, 1, 6), at(2024, 1, 12)),  # day 13 OR Friday: Fri 12th first
        ("0 0 29 feb *", at(2024, 3, 1), at(2028, 2, 29)),
        ("@hourly", at(2024, 1, 1, 5, 59, 59), at(2024, 1, 1, 6)),
        ("@daily", at(2024, 1, 1, 0, 0, 1), at(2024, 1, 2)),
        ("@weekly", at(2024, 1, 1), at(2024, 1, 7)),
        ("@monthly", at(2024, 1, 31), at(2024, 2, 1)),
        ("@yearly", at(2024, 6, 1), at(2025, 1, 1)),
        ("5,10 0 * * *", at(2024, 1, 1, 0, 5), at(2024, 1, 1, 0, 10)),
        ("10/20 * * * *", at(2024, 1, 1, 0, 11), at(2024, 1, 1, 0, 30)),
    ],
)
def test_cron_schedules_fire_when_cron_would(
    spec: str, after: datetime, expected: datetime
) -> None:
    assert parse_cron_spec(spec).next_after(after) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "expected e.g."),
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute '60': out of range 0-59"),
        ("* 24 * * *", "hour '24': out of range 0-23"),
        ("* * 0 * *", "day of month '0': out of range 1-31"),
        ("* * * 13 *", "month '13': out of range 1-12"),
        ("* * * * 8", "day of week '8': out of range 0-7"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step after '/' must be a positive number"),
        ("x * * * *", "minute 'x': expected a number"),
        ("@sometimes", "unknown descriptor"),
        ("@every", "needs a duration"),
        ("@every 500ms", "at least 1s"),
    ],
)
def test_bad_cron_specs_are_refused_naming_the_part(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid cron spec") as info:
        parse_cron_spec(spec)
    assert fragment in info.value.message


def test_cron_needs_aware_times() -> None:
    with pytest.raises(InvalidArgument, match="time zone"):
        parse_cron_spec("@hourly").next_after(datetime(2024, 1, 1))


# --- Pachyderm's two spellings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "camel"),
    [
        ("join_on", "joinOn"),
        ("parallelism_spec", "parallelismSpec"),
        ("accept_return_code", "acceptReturnCode"),
        ("s3_out", "s3Out"),
        ("cron_spec", "cronSpec"),
        ("glob", "glob"),
    ],
)
def test_json_names_are_protojsons_lower_camel_case(proto: str, camel: str) -> None:
    assert json_name(proto) == camel


SNAKE_FULL: dict[str, Any] = {
    "pipeline": {"name": "full", "project": {"name": "default"}},
    "transform": {
        "cmd": ["sh"],
        "err_cmd": ["true"],
        "err_stdin": ["x"],
        "accept_return_code": [3, 4],
        "working_dir": "/work",
        "user": "1000:1000",
        "env": {"MY_VAR": "1"},
        "secrets": [
            {"name": "creds", "key": "token", "env_var": "TOKEN"},
            {"name": "certs", "mount_path": "/etc/certs"},
        ],
    },
    "input": {
        "cross": [
            {
                "join": [
                    pfs("a", "/(*)", join_on="$1", outer_join=True, empty_files=True),
                    pfs("b", "/(*)", join_on="$1", project="default"),
                ]
            },
            {"group": [pfs("c", "/(*)", group_by="$1")]},
            pfs(
                "d",
                branch="prod",
                trigger={"branch": "staging", "all": True, "size": "1MB", "commits": 2},
            ),
            {"cron": {"name": "tick", "spec": "@daily", "project": "default"}},
        ]
    },
    "parallelism_spec": {"constant": 2},
    "datum_tries": 4,
    "datum_timeout": "10s",
    "job_timeout": "1m30s",
    "output_branch": "out",
    "reprocess_spec": "every_job",
    "resource_requests": {"cpu": 1, "memory": "1G"},
    "resource_limits": {"gpu": {"type": "nvidia.com/gpu", "number": 1}},
}


def _camel_keys(value: Any, *, inside_map: bool = False) -> Any:
    """``value`` with every field name in protojson's spelling (map keys such as env's kept)."""
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        (key if inside_map else json_name(key)): _camel_keys(item, inside_map=key == "env")
        for key, item in value.items()
    }


def test_every_field_reads_the_same_in_both_spellings() -> None:
    camel = _camel_keys(SNAKE_FULL)
    assert camel["parallelismSpec"] == {"constant": 2}
    assert camel["transform"]["env"] == {"MY_VAR": "1"}
    assert camel["input"]["cross"][0]["join"][0]["pfs"]["joinOn"] == "$1"
    snake_spec = parse_pipeline_spec(SNAKE_FULL)
    camel_spec = parse_pipeline_spec(camel)
    assert camel_spec == snake_spec
    # The stored form is always the proto spelling, so one spec reads one way everywhere.
    assert camel_spec.raw == snake_spec.raw
    assert "accept_return_code" in camel_spec.raw["transform"]


def test_both_spellings_in_json_and_yaml_files_with_several_pipelines() -> None:
    yaml_text = """
pipeline: {name: first}
transform: {cmd: [sh], workingDir: /pfs}
input: {pfs: {repo: a, glob: /*, emptyFiles: true}}
parallelismSpec: {constant: 3}
---
pipeline: {name: second}
transform: {cmd: [sh], working_dir: /pfs}
input: {pfs: {repo: first, glob: /*, empty_files: true}}
parallelism_spec: {constant: 3}
"""
    first, second = parse_pipeline_specs(yaml_text)
    assert (first.parallelism, second.parallelism) == (3, 3)
    assert first.transform.working_dir == second.transform.working_dir == "/pfs"
    assert isinstance(first.input, PfsInput) and first.input.empty_files
    json_text = json.dumps([_camel_keys(base_spec()), base_spec(pipeline={"name": "two"})])
    assert [s.name for s in parse_pipeline_specs(json_text)] == ["edges", "two"]


def test_specs_as_pachyderms_examples_write_them() -> None:
    outer = {
        "pipeline": {"name": "outer_join"},
        "input": {
            "join": [
                pfs("stores", "/STOREID(*).txt", branch="master", joinOn="$1", outerJoin=True),
                pfs("returns", "/*_STOREID(*).txt", branch="master", joinOn="$1", outerJoin=True),
            ]
        },
        "transform": {"cmd": ["python", "outer/main.py"], "image": "example/joins:2.1.0"},
    }
    spec = parse_pipeline_spec(outer)
    assert isinstance(spec.input, JoinInput)
    assert all(p.outer_join and p.join_on == "$1" for p in spec.input.inputs)
    mover = {
        "pipeline": {"name": "branch-mover"},
        "input": {"cron": {"name": "tick", "spec": "@every 1m", "overwrite": True}},
        "transform": {
            "cmd": ["sh"],
            "secrets": [{"name": "user-secret", "envVar": "AUTH_TOKEN", "key": "auth_token"}],
        },
    }
    assert parse_pipeline_spec(mover).transform.secrets == (
        SecretUse(name="user-secret", key="auth_token", env_var="AUTH_TOKEN"),
    )


def test_protojson_integers_written_as_strings_are_read() -> None:
    spec = parse_pipeline_spec(
        _camel_keys(
            base_spec(
                datum_tries="5",
                parallelism_spec={"constant": "2"},
                resource_limits={"cpu": "0.5"},
                transform={"cmd": ["sh"], "accept_return_code": ["1"]},
            )
        )
    )
    assert (spec.datum_tries, spec.parallelism) == (5, 2)
    assert spec.resource_limits == Resources(cpu=0.5)
    assert spec.transform.accept_return_code == (1,)


def test_errors_name_the_field_as_the_user_spelled_it() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            base_spec(parallelismSpec={"constant": 0}),
            "parallelismSpec.constant: must be at least 1",
        ),
        (base_spec(datumTimeout="soon"), "datumTimeout: invalid duration 'soon'"),
        (base_spec(outputBranch="a b"), "outputBranch: invalid branch name"),
        (base_spec(reprocessSpec="never"), "reprocessSpec: expected one of"),
        (base_spec(input=pfs("a", "/(*)", joinOn="$1")), "input.pfs.joinOn: only meaningful"),
        (
            base_spec(resourceLimits={"gpu": {"type": "g", "numbr": 1}}),
            "resourceLimits.gpu: unknown field 'numbr' (did you mean 'number'?)",
        ),
        (base_spec(input=pfs("a", joinOm="$1")), "unknown field 'joinOm' (did you mean 'joinOn'?)"),
        (base_spec(s3Out=True), "'s3Out' is a Pachyderm field that Tusk does not support"),
        (
            base_spec(transform={"cmd": ["a"], "workingDir": "rel"}),
            "transform.workingDir: expected an absolute path",
        ),
    ]
    for raw, fragment in cases:
        with pytest.raises(InvalidArgument) as info:
            parse_pipeline_spec(raw)
        assert fragment in info.value.message, (fragment, info.value.message)


@pytest.mark.parametrize(
    ("raw", "path", "first", "second"),
    [
        (base_spec(datum_tries=2, datumTries=2), "", "datum_tries", "datumTries"),
        (
            base_spec(input={"join": [pfs("a", "/(*)", join_on="$1", joinOn="$1")]}),
            "input.join[0].pfs",
            "join_on",
            "joinOn",
        ),
        (
            base_spec(transform={"cmd": ["a"], "errCmd": ["x"], "err_cmd": ["y"]}),
            "transform",
            "errCmd",
            "err_cmd",
        ),
    ],
)
def test_both_spellings_of_one_field_are_refused(
    raw: dict[str, Any], path: str, first: str, second: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(raw)
    where = f"{path}: " if path else ""
    assert info.value.message == (
        f"pipeline spec: {where}{first!r} and {second!r} are two spellings of one field; give it once"
    )
    assert info.value.details["field"] == (f"{path}.{second}" if path else second)


# --- projects ----------------------------------------------------------------------------------


def test_the_default_project_is_accepted_everywhere() -> None:
    spec = parse_pipeline_spec(
        base_spec(
            pipeline={"name": "p", "project": {"name": "default"}},
            input={
                "cross": [
                    pfs("a", project="default"),
                    {"cron": {"name": "t", "spec": "@daily", "project": "default"}},
                ]
            },
        )
    )
    assert spec.name == "p"
    assert parse_pipeline_spec(base_spec(pipeline={"name": "p", "project": {}})).name == "p"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (base_spec(pipeline={"name": "p", "project": {"name": "ml"}}), "pipeline.project.name"),
        (base_spec(input=pfs("a", project="ml")), "input.pfs.project"),
        (
            base_spec(input={"cron": {"name": "t", "spec": "@daily", "project": "ml"}}),
            "input.cron.project",
        ),
    ],
)
def test_another_project_is_refused_with_one_clear_line(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(raw)
    assert info.value.message == (
        f"pipeline spec: {path}: 'ml': projects are not supported yet; "
        "use project 'default' or leave it out"
    )


# --- transform: return codes, directory, user, secrets ------------------------------------------


def test_transform_fields_pachyderm_specs_use_are_read() -> None:
    spec = parse_pipeline_spec(SNAKE_FULL)
    assert spec.transform.accept_return_code == (3, 4)
    assert spec.transform.working_dir == "/work"
    assert spec.transform.user == "1000:1000"
    assert spec.transform.secrets == (
        SecretUse(name="creds", key="token", env_var="TOKEN"),
        SecretUse(name="certs", mount_path="/etc/certs"),
    )
    assert spec.raw["transform"]["secrets"] == [
        {"name": "creds", "key": "token", "env_var": "TOKEN"},
        {"name": "certs", "mount_path": "/etc/certs"},
    ]
    assert parse_pipeline_spec(spec.raw) == spec
    for user in ("0", "root", "65534", "1000:0"):
        assert parse_pipeline_spec(base_spec(transform={"cmd": ["a"], "user": user})).transform.user


def _transform(**fields: Any) -> dict[str, Any]:
    return base_spec(transform={"cmd": ["a"], **fields})


TRANSFORM_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("code text", _transform(accept_return_code=["x"]), "accept_return_code[0]: expected a whole"),
    ("code range", _transform(accept_return_code=[1, 256]), "accept_return_code[1]: an exit code"),
    ("codes not list", _transform(accept_return_code=1), "accept_return_code: expected a list"),
    ("dir relative", _transform(working_dir="pfs"), "working_dir: expected an absolute path"),
    ("dir dotdot", _transform(working_dir="/pfs/../etc"), "working_dir: '..' is not allowed"),
    ("user name", _transform(user="alice"), "transform.user: 'alice': give a numeric id"),
    ("user group name", _transform(user="1000:staff"), "give a numeric id"),
    ("user huge", _transform(user="4294967295"), "id 4294967295 is out of range"),
    ("user number", _transform(user=1000), "transform.user: expected a string"),
    ("secrets object", _transform(secrets={"name": "x"}), "transform.secrets: expected a list"),
    ("secret no name", _transform(secrets=[{"mount_path": "/s"}]), "secrets[0].name: required"),
    (
        "secret bad name",
        _transform(secrets=[{"name": "My_Secret", "mount_path": "/s"}]),
        "transform.secrets[0].name: invalid secret name 'My_Secret'",
    ),
    (
        "secret neither",
        _transform(secrets=[{"name": "s"}]),
        "transform.secrets[0]: give exactly one of env_var (with key) or mount_path",
    ),
    (
        "secret both",
        _transform(secrets=[{"name": "s", "key": "k", "env_var": "V", "mount_path": "/s"}]),
        "give exactly one of env_var",
    ),
    (
        "secret env no key",
        _transform(secrets=[{"name": "s", "envVar": "V"}]),
        "transform.secrets[0].key: required with env_var",
    ),
    (
        "secret env name",
        _transform(secrets=[{"name": "s", "key": "k", "env_var": "1V"}]),
        "secrets[0].env_var: invalid variable name '1V'",
    ),
    (
        "secret mount key",
        _transform(secrets=[{"name": "s", "key": "k", "mount_path": "/s"}]),
        "secrets[0].key: only used with env_var",
    ),
    (
        "secret mount relative",
        _transform(secrets=[{"name": "s", "mountPath": "s"}]),
        "secrets[0].mountPath: expected an absolute path",
    ),
    (
        "secret over pfs",
        _transform(secrets=[{"name": "s", "mount_path": "/pfs/in"}]),
        "would hide the root or /pfs",
    ),
    (
        "secret env twice",
        _transform(env={"TOKEN": "x"}, secrets=[{"name": "s", "key": "k", "env_var": "TOKEN"}]),
        "transform.secrets[0]: 'TOKEN' is already set by env or a secret",
    ),
    (
        "secret mount twice",
        _transform(secrets=[{"name": "a", "mount_path": "/s/"}, {"name": "b", "mount_path": "/s"}]),
        "transform.secrets[1]: '/s' is already set",
    ),
    ("secret typo", _transform(secrets=[{"name": "s", "env": "X"}]), "unknown field 'env'"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(raw, frag) for _, raw, frag in TRANSFORM_REFUSALS],
    ids=[c[0] for c in TRANSFORM_REFUSALS],
)
def test_bad_transform_fields_are_refused(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(raw)
    assert fragment in info.value.message


def test_new_transform_fields_change_the_fingerprint_only_when_set() -> None:
    base = Transform(cmd=("sh",), stdin=("echo 1",), env={"A": "1"}, image="img")
    # The fingerprint of a transform without the newer fields is the one it always had.
    body = {"v": "tusk-transform-v1", "cmd": ["sh"], "stdin": ["echo 1"], "env": {"A": "1"}}
    body["image"] = "img"
    expected = blake3.blake3(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert transform_fingerprint(base) == expected
    changed = [
        replace(base, accept_return_code=(1,)),
        replace(base, working_dir="/tmp"),
        replace(base, user="1000"),
        replace(base, secrets=(SecretUse("s", key="k", env_var="V"),)),
        replace(base, secrets=(SecretUse("s", key="other", env_var="V"),)),
        replace(base, secrets=(SecretUse("s", mount_path="/s"),)),
    ]
    fingerprints = {transform_fingerprint(t) for t in changed}
    assert len(fingerprints) == len(changed) and expected not in fingerprints


# --- triggers ----------------------------------------------------------------------------------


def _triggered(**trigger: Any) -> BranchTrigger:
    spec = parse_pipeline_spec(base_spec(input=pfs("a", trigger=trigger)))
    assert isinstance(spec.input, PfsInput) and spec.input.trigger is not None
    assert parse_pipeline_spec(spec.raw) == spec
    return spec.input.trigger


def test_triggers_are_read_like_pachyderm() -> None:
    assert _triggered(branch="staging", size="1MB") == BranchTrigger("staging", size=1_000_000)
    assert _triggered(branch="staging", commits=10, all=True) == BranchTrigger(
        "staging", commits=10, all=True
    )
    assert _triggered(branch="staging", cronSpec="@every 1h") == BranchTrigger(
        "staging", cron="@every 1h"
    )
    combined = _triggered(branch="staging", rate_limit_spec="@daily", size="10K", commits="3")
    assert combined == BranchTrigger("staging", size=10_000, commits=3, cron="@daily")
    raw = parse_pipeline_spec(base_spec(input=pfs("a", trigger={"branch": "s", "size": "2GiB"})))
    assert raw.raw["input"]["pfs"]["trigger"] == {"branch": "s", "size": "2GiB"}


TRIGGER_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"size": "1MB"}, "input.pfs.trigger.branch: required"),
    ({"branch": "master", "size": "1MB"}, "trigger.branch: must differ from the input's branch"),
    ({"branch": "s"}, "input.pfs.trigger: needs a condition: size, commits, cron_spec"),
    ({"branch": "s", "size": "lots"}, "trigger.size: invalid size 'lots'"),
    ({"branch": "s", "size": "0"}, "trigger.size: must be more than 0 bytes"),
    ({"branch": "s", "size": 100}, "trigger.size: expected a string"),
    ({"branch": "s", "commits": -1}, "trigger.commits: must be at least 0"),
    ({"branch": "s", "cron_spec": "61 * * * *"}, "trigger.cron_spec: invalid cron spec"),
    ({"branch": "s", "rateLimitSpec": "@often"}, "trigger.rateLimitSpec: invalid cron spec"),
    (
        {"branch": "s", "cron_spec": "@daily", "commits": 2},
        "trigger.cron_spec: fires on its schedule alone",
    ),
    ({"branch": "s", "all": "yes", "commits": 1}, "trigger.all: expected true or false"),
    ({"branch": "s", "size_bytes": 1}, "unknown field 'size_bytes'"),
]


@pytest.mark.parametrize(("trigger", "fragment"), TRIGGER_REFUSALS)
def test_bad_triggers_are_refused(trigger: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_pipeline_spec(base_spec(input=pfs("a", trigger=trigger)))
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100", 100),
        ("100B", 100),
        ("10K", 10_000),
        ("10kb", 10_000),
        ("1MB", 1_000_000),
        ("1.5 GB", 1_500_000_000),
        ("1Ki", 1024),
        ("2MiB", 2 * 1024**2),
        ("1tb", 10**12),
        ("1P", 10**15),
    ],
)
def test_sizes_read_like_pachyderms_triggers(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "MB", "1 MB B", "1XB", "-1K", "1KiBB", "1  K", "1e3"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid size"):
        parse_size(text)
