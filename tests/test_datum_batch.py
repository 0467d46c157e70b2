"""Datum batching: one sandbox, many datums, each asked for with ``tusk next datum``.

Real bubblewrap and a real object store; the command is a shell loop as a user writes it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.scheduler.datum_batch import run_batch
from services.scheduler.tasks import DatumResult, DatumTask
from shared.pipeline.spec import parse_pipeline_spec, spec_to_json
from shared.platform.errors import InvalidArgument
from shared.storage.objstore.local import LocalStore
from tests.test_datum_runner import (
    CountingStore,
    leftovers,
    make_input,
    make_task,
    needs_bwrap,
    output_files,
)

# The loop Pachyderm's docs show, in sh: ask, source the datum's variables, work.
LOOP = 'while tusk next datum; do . /run/tusk/datum.env; cp "$in" /pfs/out/; done'


async def batch_of(store: CountingStore, count: int, script: str) -> list[DatumTask]:
    tasks = []
    for i in range(count):
        part = await make_input(store, {f"/f{i}": f"datum {i}\n".encode()}, match=f"/f{i}")
        tasks.append(replace(make_task([part], script), datum_id=f"d{i}", datum_batching=True))
    return tasks


async def run(
    store: CountingStore, tasks: list[DatumTask], workdir: Path
) -> dict[str, DatumResult]:
    results: dict[str, DatumResult] = {}

    async def on_result(task: DatumTask, result: DatumResult) -> None:
        assert task.datum_id not in results, "one result per datum"
        results[task.datum_id] = result

    await run_batch(store, tasks, workdir=workdir, on_result=on_result)
    return results


@needs_bwrap
async def test_one_sandbox_runs_every_datum_of_the_batch_with_its_own_files_and_output(
    tmp_path: Path,
) -> None:
    store = CountingStore(LocalStore(tmp_path / "objects"))
    tasks = await batch_of(store, 5, LOOP)
    # Each datum sees only its own file; the sandbox counts how often it started.
    script = (
        "echo started >> /tmp/starts; "
        "while tusk next datum; do . /run/tusk/datum.env; ls /pfs/in > /pfs/out/seen-$PACH_DATUM_ID; "
        'cp "$in" /pfs/out/; wc -l < /tmp/starts > /pfs/out/starts-$PACH_DATUM_ID; done'
    )
    tasks = [replace(t, cmd=("sh", "-c", script)) for t in tasks]
    results = await run(store, tasks, tmp_path)
    assert sorted(results) == [f"d{i}" for i in range(5)]
    for i in range(5):
        result = results[f"d{i}"]
        assert result.state == "SUCCESS", result
        out = await output_files(store, result)
        assert out == {
            f"/f{i}": f"datum {i}\n".encode(),
            f"/seen-d{i}": f"f{i}\n".encode(),
            f"/starts-d{i}": b"1\n",  # one start of the command for all five
        }
    # The batch's scratch directory is gone.
    assert [p for p in leftovers(tmp_path) if p.name.startswith("batch-")] == []


@needs_bwrap
async def test_a_datum_that_breaks_the_command_fails_alone_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    store = CountingStore(LocalStore(tmp_path / "objects"))
    script = (
        "while tusk next datum; do . /run/tusk/datum.env; "
        '[ "$PACH_DATUM_ID" = d2 ] && exit 3; cp "$in" /pfs/out/; done'
    )
    results = await run(store, await batch_of(store, 5, script), tmp_path)
    assert {d: r.state for d, r in results.items()} == {
        "d0": "SUCCESS",
        "d1": "SUCCESS",
        "d2": "FAILED",
        "d3": "SUCCESS",
        "d4": "SUCCESS",
    }
    assert results["d2"].error == "command exited with code 3"
    assert results["d2"].output_root is None  # nothing of a failed datum is stored


@needs_bwrap
async def test_a_command_that_never_asks_fails_its_datums_with_the_reason(
    tmp_path: Path,
) -> None:
    store = CountingStore(LocalStore(tmp_path / "objects"))
    results = await run(store, await batch_of(store, 2, 'cp "$in" /pfs/out/'), tmp_path)
    assert {r.state for r in results.values()} == {"FAILED"}
    assert "must call `tusk next datum`" in (results["d0"].error or "")


@needs_bwrap
async def test_a_datum_past_its_timeout_fails_and_the_next_one_runs(tmp_path: Path) -> None:
    store = CountingStore(LocalStore(tmp_path / "objects"))
    script = (
        "while tusk next datum; do . /run/tusk/datum.env; "
        '[ "$PACH_DATUM_ID" = d0 ] && sleep 30; cp "$in" /pfs/out/; done'
    )
    tasks = [replace(t, datum_timeout=1.0) for t in await batch_of(store, 2, script)]
    results = await run(store, tasks, tmp_path)
    assert results["d0"].state == "FAILED"
    assert results["d0"].error == "command timed out after 1 s"
    assert results["d1"].state == "SUCCESS"


def test_the_spec_takes_datum_batching_and_refuses_it_with_err_cmd() -> None:
    spec = {
        "pipeline": {"name": "p"},
        "transform": {"cmd": ["sh", "-c", LOOP], "datumBatching": True},
        "input": {"pfs": {"repo": "r", "glob": "/*"}},
    }
    parsed = parse_pipeline_spec(spec)
    assert parsed.transform.datum_batching
    assert spec_to_json(parsed)["transform"]["datum_batching"] is True
    spec["transform"]["err_cmd"] = ["true"]  # type: ignore[index]
    with pytest.raises(InvalidArgument, match="err_cmd: is not supported with datum_batching"):
        parse_pipeline_spec(spec)
