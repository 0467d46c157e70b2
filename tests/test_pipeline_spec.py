"""Pipeline specs: reading JSON/YAML, validation with field paths, defaults, durations, cron."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.errors import InvalidArgument
from shared.pps.durations import format_duration, parse_cron_spec, parse_duration
from shared.pps.spec import (
    CronInput,
    CrossInput,
    GroupInput,
    JoinInput,
    PfsInput,
    PipelineSpec,
    Resources,
    Transform,
    UnionInput,
    expand_template,
    input_branches,
    load_spec_documents,
    parse_pipeline_spec,
    parse_pipeline_specs,
    parse_quantity,
    pfs_inputs,
    spec_to_json,
    template_groups,
    transform_fingerprint,
)


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
    ],
    ids=["object", "array", "concatenated", "bom-indented"],
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
        "parallelism str",
        base_spec(parallelism_spec={"constant": "2"}),
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
        "cpu string",
        base_spec(resource_limits={"cpu": "2"}),
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
