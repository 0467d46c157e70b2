"""Pachyderm's own example pipelines, their spec files unchanged, run end to end through the
``tusk`` CLI against a cluster started by ``tusk up`` (the acceptance test of issue #9).

The specs are byte-for-byte copies from pachyderm/pachyderm (tests/pachyderm_examples/README.md
says which commit, which files, and which examples are left out and why). Each test puts data of
the shape the example's README and Makefile describe into the repos the spec reads, creates the
pipelines from the unchanged files with ``tusk create pipeline -f``, waits for the jobs with
``tusk list job`` and ``tusk wait job``, downloads every output file with ``tusk get file -r``
and compares it with what the test computes itself from the input data.

Where an example's first stage needs its own image (Python, Go), the shell stage that follows
runs verbatim over a repo holding what that first stage writes, computed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.parts import bubblewrap_missing, require
from tests.fixtures.servers import server_scratch_dir
from tests.test_cli import TUSK, Tusk
from tests.test_embedded import processes_mentioning

EXAMPLES = Path(__file__).resolve().parent / "pachyderm_examples"

# Every spec file here and the id of its blob in pachyderm/pachyderm at this commit, under
# examples/: `git hash-object FILE` must give the same id, so no spec can drift from upstream.
UPSTREAM_COMMIT = "e237475e9910a2d6299d7d2c3d6fc3b9a8f28f0b"
SPECS = {
    "group/pipelines/lab/lab_group_by_hospital.pipeline.json": (
        "259c596725fa663bd133526c72ff18b75c79377e"
    ),
    "group/pipelines/lab/lab_group_by_patient.pipeline.json": (
        "408b67308c544d16bd7ed64be0aeccd1a16166ac"
    ),
    "group/pipelines/lab/reduce_group_by_hospital.pipeline.json": (
        "83f55bf911305351ce388c778643c6791516787e"
    ),
    "group/pipelines/lab/reduce_group_by_patient.pipeline.json": (
        "19677e2bbab54359bd349d4979c8a6cc25ea412e"
    ),
    "joins/pipelines/inner/reduce_inner.pipeline.json": "6b3e33b47ef4303d81011e188a1e5d07a45bcf7e",
    "joins/pipelines/outer/reduce_outer.pipeline.json": "52f7681133b5569f7e8e83e5fed6ea3a543ddb48",
    "ml/hyperparameter/select.pipeline.json": "2c768c6021c78693fae012553f00a763f970d622",
    "ml/hyperparameter/split.pipeline.json": "4eec5957134d91016b78cca73677e576c6b77ebe",
    "shuffle/shuffle.pipeline.json": "2d58596c77baacabc971cecdaa725d9b9ec08102",
    "word_count/pipelines/reduce.pipeline.json": "656391a7f3f0f8da0885107cc8144459f4aec34b",
}

JOB_TIMEOUT = 30.0


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_specs_are_pachyderm_files_byte_for_byte() -> None:
    present = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.json"))
    assert present == sorted(SPECS)
    for name, blob in SPECS.items():
        assert git_blob_id((EXAMPLES / name).read_bytes()) == blob, f"{name} differs from upstream"


# --- one cluster for the module: `tusk up --detach`, then `tusk down` --------------------------


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    """The environment of a cluster started by ``tusk up --detach`` in a private $TUSK_HOME.

    Afterwards ``tusk down`` must stop it and leave no process that names the home.
    """
    require(bubblewrap_missing(), "bubblewrap (datum sandboxes)")
    # Outside pytest's basetemp: PostgreSQL runs as its own user and must reach its files.
    scratch = server_scratch_dir("tusk-pachyderm-examples-")
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env["TUSK_HOME"] = str(home)
    # The examples name public images (ubuntu:20.04 …) no test can pull offline: they run
    # on the host's /usr, as before images were honoured (docs/images.md).
    home.mkdir(mode=0o700, parents=True)
    (home / "config.toml").write_text('local_images = "host"\n')
    try:
        up = subprocess.run(
            [str(TUSK), "up", "--detach", "--any-ports"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, f"tusk up failed: {up.stderr}"
        yield env
    finally:
        down = subprocess.run(
            [str(TUSK), "down"], env=env, capture_output=True, text=True, timeout=120
        )
        left = processes_of(home)
        for pid in left:  # ours: they run for our private home
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    assert down.returncode == 0, f"tusk down failed: {down.stderr}"
    assert left == {}, f"processes left running after tusk down: {left}"


def processes_of(home: Path) -> dict[int, str]:
    """pid → command line of the processes of the cluster in ``home``: those naming it on their
    command line (PostgreSQL, NATS, the supervisor) or in $TUSK_HOME (services, workers)."""
    found = {pid: "" for pid in processes_mentioning(home)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"TUSK_HOME={home}\0".encode() in (entry / "environ").read_bytes():
                    found[int(entry.name)] = ""
            except OSError:
                continue
    for pid in found:
        with contextlib.suppress(OSError):
            found[pid] = (
                (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
    return found


@pytest.fixture
def tusk(cluster_env: dict[str, str], tmp_path: Path) -> Tusk:
    return Tusk(cluster_env, tmp_path)


# --- driving the CLI ---------------------------------------------------------------------------


async def put_folder(tusk: Tusk, repo: str, files: dict[str, bytes]) -> str:
    """Create ``repo``, write ``files`` to a local folder and ``tusk put file -r REPO@master:/
    -f FOLDER`` it, as the examples' READMEs do (one commit); the id of that commit."""
    folder = tusk.cwd / "data" / repo
    shutil.rmtree(folder, ignore_errors=True)
    for path, data in files.items():
        local = folder / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    await tusk.ok("create", "repo", repo)
    await tusk.ok("put", "file", "-r", f"{repo}@master:/", "-f", str(folder))
    return str((await tusk.ok("inspect", "commit", f"{repo}@master", "-o", "json")).json()["id"])


async def create_pipeline(tusk: Tusk, spec: str) -> None:
    await tusk.ok("create", "pipeline", "-f", str(EXAMPLES / spec))


async def finished_job(
    tusk: Tusk, pipeline: str, reads: Collection[str], timeout: float = JOB_TIMEOUT
) -> dict[str, Any]:
    """The pipeline's job over input commits ``reads`` once it is done (``tusk wait job``); it
    must have succeeded, or the failure says why (reason, datums' errors, last logs)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = (await tusk.ok("list", "job", "-p", pipeline, "-o", "json")).json()
        job = next((j for j in jobs if set(reads) <= {c["id"] for c in j["input_commits"]}), None)
        if job is not None:
            break
        if time.monotonic() > deadline:
            shown = [(j["id"][:8], j["state"], j["reason"]) for j in jobs]
            pytest.fail(f"{pipeline}: no job reads {sorted(reads)} after {timeout} s: {shown}")
        await asyncio.sleep(0.3)
    left = max(deadline - time.monotonic(), 1.0)
    ref = f"{pipeline}@{job['id']}"
    waited = await tusk("wait", "job", ref, "--timeout", f"{left:.1f}", "-o", "json")
    if waited.code != 0:
        now = (await tusk.ok("inspect", "job", ref, "-o", "json")).json()
        pytest.fail(
            f"not done after {timeout} s ({waited.stderr.strip()}): {await failure_report(tusk, now)}"
        )
    done = dict(waited.json())
    if done["state"] != "JOB_SUCCESS":
        pytest.fail(await failure_report(tusk, done))
    return done


async def failure_report(tusk: Tusk, job: dict[str, Any]) -> str:
    """The job's state and reason, its datums' states and errors, its last log lines."""
    ref = f"{job['pipeline']}@{job['id']}"
    listed = await tusk("list", "datum", ref, "-o", "json")
    datums = sorted(
        {(d["state"], d["attempts"], d["error"]) for d in listed.json()} if listed.code == 0 else []
    )
    logs = (await tusk("logs", "-p", job["pipeline"], "--job", job["id"])).text.splitlines()
    return (
        f"{ref} {job['state']}: {job['reason']}; datums: {datums}; last logs: {logs[-12:]}; "
        f"worker problems: {worker_problems(tusk, job['pipeline'])}"
    )


def worker_problems(tusk: Tusk, pipeline: str) -> list[str]:
    """The warnings and errors of the pipeline's worker log under $TUSK_HOME/logs."""
    log = Path(tusk.env["TUSK_HOME"]) / "logs" / f"worker-{pipeline}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if " WARNING " in line or " ERROR " in line][-6:]


async def output_files(tusk: Tusk, repo: str, commit: str) -> dict[str, bytes]:
    """Every file of ``repo@commit``, downloaded with ``tusk get file -r``."""
    local = tusk.cwd / "got" / f"{repo}-{commit}"
    await tusk.ok("get", "file", "-r", f"{repo}@{commit}:/", "-o", str(local))
    return {
        "/" + path.relative_to(local).as_posix(): path.read_bytes()
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }


def counts(job: dict[str, Any]) -> tuple[int, int, int]:
    return job["data_processed"], job["data_skipped"], job["data_total"]


def concatenated_per_directory(files: dict[str, bytes]) -> dict[str, bytes]:
    """What the examples' reduce step makes of ``/DIR/FILE`` inputs: one ``/DIR.txt`` per
    directory, its files' bytes in name order (``for f in /pfs/IN/*/*; cat $f >> DIR.txt``)."""
    merged: dict[str, bytes] = defaultdict(bytes)
    for path in sorted(files):
        directory = path.split("/")[1]
        merged[f"/{directory}.txt"] += files[path]
    return dict(merged)


# --- examples/group: lab results grouped by patient and by hospital ----------------------------

# examples/group/Makefile (setup-lab): T<time>-LIPID-PATID<patient>-CLIA<lab>.txt, an HL7-like
# record without a final newline.
LAB_RESULTS = [
    ("1606707557", "1", "24D9871327", "777888", 196, 100),
    ("1606331395", "2", "24D9871327", "777889", 212, 110),
    ("1606707579", "3", "24D9871327", "777890", 188, 89),
    ("1606707597", "4", "24D9871327", "777891", 230, 132),
    ("1606707613", "1", "24D9871328", "777892", 199, 101),
    ("1606707635", "3", "24D9871328", "777893", 187, 92),
]


def lab_result(
    stamp: str, patient: str, lab: str, order: str, chol: int, tri: int
) -> tuple[str, bytes]:
    name = f"T{stamp}-LIPID-PATID{patient}-CLIA{lab}.txt"
    record = (
        f"PID|PATID{patient}\nORC|ORD{order}\n"
        f"OBX|1|NM|2093-3^Cholesterol|{chol}|mg/dL\nOBX|2|NM|2571-8^Triglyceride|{tri}|mg/dL"
    )
    return f"/{name}", record.encode()


def grouped_by(files: dict[str, bytes], field: str) -> dict[str, bytes]:
    """``/KEY/NAME`` for every lab result, KEY being its PATID or CLIA part of the name."""
    out = {}
    for path, data in files.items():
        parts = path.removeprefix("/").removesuffix(".txt").split("-")
        key = {"PATID": parts[2], "CLIA": parts[3]}[field].removeprefix(field)
        out[f"/{key}{path}"] = data
    return out


async def test_group_lab_results_by_patient_and_by_hospital(tusk: Tusk) -> None:
    lab = dict(lab_result(*row) for row in LAB_RESULTS)
    commit = await put_folder(tusk, "labresults", lab)
    for spec in (
        "lab_group_by_hospital",
        "lab_group_by_patient",
        "reduce_group_by_hospital",
        "reduce_group_by_patient",
    ):
        await create_pipeline(tusk, f"group/pipelines/lab/{spec}.pipeline.json")

    stages = {"group_by_patient": "PATID", "group_by_hospital": "CLIA"}
    groups = {"group_by_patient": 4, "group_by_hospital": 2}  # one datum per patient, per lab
    for pipeline, field in stages.items():
        job = await finished_job(tusk, pipeline, [commit])
        assert counts(job) == (groups[pipeline], 0, groups[pipeline])
        grouped = await output_files(tusk, pipeline, job["output_commit"])
        assert grouped == grouped_by(lab, field)
        reduced = await finished_job(tusk, f"reduce_{pipeline}", [job["output_commit"]])
        assert counts(reduced) == (groups[pipeline], 0, groups[pipeline])
        merged = await output_files(tusk, f"reduce_{pipeline}", reduced["output_commit"])
        assert merged == concatenated_per_directory(grouped)
        assert sorted(merged) == (
            ["/1.txt", "/2.txt", "/3.txt", "/4.txt"]
            if field == "PATID"
            else ["/24D9871327.txt", "/24D9871328.txt"]
        )

    # A second result for patient 2 from the second lab: one group of each pipeline runs again.
    path, data = lab_result("1606707700", "2", "24D9871328", "777894", 205, 104)
    await tusk.ok("put", "file", f"labresults@master:{path}", "-f", "-", stdin=data)
    commit = (await tusk.ok("inspect", "commit", "labresults@master", "-o", "json")).json()["id"]
    lab[path] = data
    for pipeline, field in stages.items():
        job = await finished_job(tusk, pipeline, [commit])
        assert counts(job) == (1, groups[pipeline] - 1, groups[pipeline])
        grouped = await output_files(tusk, pipeline, job["output_commit"])
        assert grouped == grouped_by(lab, field)
        reduced = await finished_job(tusk, f"reduce_{pipeline}", [job["output_commit"]])
        assert counts(reduced) == (1, groups[pipeline] - 1, groups[pipeline])
        merged = await output_files(tusk, f"reduce_{pipeline}", reduced["output_commit"])
        assert merged == concatenated_per_directory(grouped)


# --- examples/joins: the reduce stages over what the inner and outer joins write --------------

# examples/joins/Makefile (setup): stores as JSON, purchases and returns as
# ORDER<id>_STOREID<store>.txt.
STORES = {
    "1": ("washington st.", "02108"),
    "2": ("hollywood bvd.", "02108"),
    "3": ("beverly hills", "90210"),
    "4": ("mariposa st.", "94107"),
    "5": ("tremont st.", "90210"),
}
PURCHASES = {
    "ORDERW080520_STOREID1.txt": "ORDER_HEADER|W080520|2020-10-10\nSKU|1001|QTY|2|UNIT_PRICE|100.00\n",
    "ORDERW080521_STOREID1.txt": "ORDER_HEADER|W080521|2020-10-10\nSKU|2002|QTY|1|UNIT_PRICE|250.00\n",
    "ORDERW078929_STOREID2.txt": "ORDER_HEADER|W078929|2020-10-10\nSKU|0615|QTY|1|UNIT_PRICE|75.00\n",
    "ORDERW598471_STOREID3.txt": "ORDER_HEADER|W598471|2020-10-10\nSKU|1001|QTY|3|UNIT_PRICE|100.00\n",
    "ORDERW080231_STOREID5.txt": "ORDER_HEADER|W080231|2020-10-10\nSKU|1001|QTY|2|UNIT_PRICE|100.00\n",
    "ORDERW080528_STOREID5.txt": "ORDER_HEADER|W080528|2020-10-10\nSKU|2002|QTY|1|UNIT_PRICE|250.00\n",
}
RETURNS = {
    "ORDERW080520_STOREID1.txt": "ORDER_HEADER|W080520|2020-10-12\nSKU|1001|QTY|1|UNIT_PRICE|100.00\n",
    "ORDERW080231_STOREID5.txt": "ORDER_HEADER|W080231|2020-10-10\nSKU|1001|QTY|1|UNIT_PRICE|100.00\n",
    "ORDERW080528_STOREID5.txt": "ORDER_HEADER|W080528|2020-10-10\nSKU|2002|QTY|1|UNIT_PRICE|250.00\n",
    "ORDERW261452_STOREID0.txt": "ORDER_HEADER|W261452|2020-10-10\nSKU|0246|QTY|1|UNIT_PRICE|50.00\n",
}


def store_of(name: str) -> str:
    found = re.fullmatch(r".*_STOREID(.*)\.txt", name)
    assert found is not None
    return found.group(1)


def inner_join_output() -> dict[str, bytes]:
    """What examples/joins' inner_join writes: per (store, purchase) datum,
    ``/<zipcode>/<purchase file>`` = a separator line naming the store, then the purchase."""
    out = {}
    for name, purchase in PURCHASES.items():
        store = store_of(name)
        store_name, zipcode = STORES[store]
        separator = f"\nPurchase at store: {store} - {store_name} \n"
        out[f"/{zipcode}/{name}"] = (separator + purchase).encode()
    return out


def outer_join_output() -> dict[str, bytes]:
    """What examples/joins' outer_join writes (outer on both sides): returns of unknown stores
    under /UNKNOWN, stores without returns as ``/<zipcode>/STOREID<n>.txt``."""
    out = {}
    for name, returned in RETURNS.items():
        store = store_of(name)
        if store in STORES:
            store_name, zipcode = STORES[store]
            separator = f"\nReturn at store: {store} - {store_name} \n"
        else:
            zipcode, separator = "UNKNOWN", "\nThis return store does not exist \n"
        out[f"/{zipcode}/{name}"] = (separator + returned).encode()
    returned_at = {store_of(name) for name in RETURNS}
    for store, (store_name, zipcode) in STORES.items():
        if store not in returned_at:
            out[f"/{zipcode}/STOREID{store}.txt"] = (
                f"\nReturn at store: {store} - {store_name} \n".encode()
            )
    return out


@pytest.mark.parametrize(
    ("join", "zipcodes"),
    [("inner", ["02108", "90210"]), ("outer", ["02108", "90210", "94107", "UNKNOWN"])],
)
async def test_joins_reduce_merges_each_zipcode(tusk: Tusk, join: str, zipcodes: list[str]) -> None:
    joined = inner_join_output() if join == "inner" else outer_join_output()
    commit = await put_folder(tusk, f"{join}_join", joined)
    await create_pipeline(tusk, f"joins/pipelines/{join}/reduce_{join}.pipeline.json")
    job = await finished_job(tusk, f"reduce_{join}", [commit])
    assert counts(job) == (len(zipcodes), 0, len(zipcodes))  # one datum per zipcode folder
    merged = await output_files(tusk, f"reduce_{join}", job["output_commit"])
    assert merged == concatenated_per_directory(joined)
    assert sorted(merged) == [f"/{zipcode}.txt" for zipcode in zipcodes]
    if join == "inner":  # examples/joins/README.md: "Each should contain 3 purchases."
        assert [merged[path].count(b"Purchase at store: ") for path in merged] == [3, 3]


# --- examples/shuffle: symlinks to empty input files, gathered per fruit -----------------------


async def test_shuffle_links_each_fruit_image_and_price_into_one_folder(tusk: Tusk) -> None:
    rng = random.Random(9)
    images = {
        f"/{fruit}.jpeg": b"\xff\xd8\xff\xe0" + rng.randbytes(size)
        for fruit, size in (("mango", 7200), ("apple", 5100))
    }
    prices = {
        "/mango.json": b'{"name":"mango","cost":2}',
        "/apple.json": b'{"name":"apple","cost":1.5}',
    }
    fruits = await put_folder(tusk, "fruits", images)
    pricing = await put_folder(tusk, "pricing", prices)
    await create_pipeline(tusk, "shuffle/shuffle.pipeline.json")
    job = await finished_job(tusk, "shuffle", [fruits, pricing])
    assert counts(job) == (4, 0, 4)  # a union: one datum per file of either repo
    # The workers see empty files (emptyFiles), but an output symlink to an input file stores
    # that file itself, as Pachyderm's README shows (img.jpeg 4.978KiB): nothing is copied.
    assert await output_files(tusk, "shuffle", job["output_commit"]) == {
        "/apple/cost.json": prices["/apple.json"],
        "/apple/img.jpeg": images["/apple.jpeg"],
        "/mango/cost.json": prices["/mango.json"],
        "/mango/img.jpeg": images["/mango.jpeg"],
    }


# --- examples/word_count: the reduce over what the map stage writes ----------------------------

PAGES = {
    "Wikipedia": "Pachyderm is a data science platform. Data versioning, data pipelines!",
    "Github": "Pachyderm: data pipelines and data lineage; version-controlled data.",
    "Blog": "Version every data set; rerun only the pipelines whose data changed.",
}


def map_output() -> dict[str, bytes]:
    """What examples/word_count's map (Go) writes for each page datum: ``/<datum id>/<word>``
    holding the word's count, words being lower-cased runs of letters."""
    out = {}
    for page, text in PAGES.items():
        datum_id = hashlib.sha256(page.encode()).hexdigest()
        words = re.sub(r"[^A-Za-z]+", " ", text).lower().split()
        for word in set(words):
            out[f"/{datum_id}/{word}"] = f"{words.count(word)}\n".encode()
    return out


async def test_word_count_reduce_sums_each_word_over_all_pages(tusk: Tusk) -> None:
    mapped = map_output()
    commit = await put_folder(tusk, "map", mapped)
    await create_pipeline(tusk, "word_count/pipelines/reduce.pipeline.json")
    job = await finished_job(tusk, "reduce", [commit])
    assert counts(job) == (1, 0, 1)
    totals: dict[str, int] = defaultdict(int)
    for path, data in mapped.items():
        totals[path.rsplit("/", 1)[1]] += int(data)
    # `find /tmp/out/ -name '*'` lists /tmp/out/ itself first: cat fails on the directory, awk
    # prints an empty sum, and the spec writes it to /out (a word "out" would replace it later).
    expected = {"/out": b"\n"} | {f"/{word}": f"{n}\n".encode() for word, n in totals.items()}
    assert await output_files(tusk, "reduce", job["output_commit"]) == expected
    assert (expected["/data"], expected["/pipelines"], len(expected)) == (b"8\n", b"3\n", 20)


# --- examples/ml/hyperparameter: split (shuf/head/tail) and select (bc, symlinks) --------------


def noisy_iris(rows: int = 100) -> bytes:
    """Rows shaped like examples/ml/hyperparameter/data/noisy_iris.csv: four measures, a class."""
    rng = random.Random(150)
    classes = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    lines = [
        ",".join(f"{rng.uniform(0.1, 8):.11f}" for _ in range(4)) + f",{classes[i * 3 // rows]}\n"
        for i in range(rows)
    ]
    return "".join(lines).encode()


async def test_hyperparameter_split_shuffles_into_train_and_test(tusk: Tusk) -> None:
    iris = noisy_iris()
    commit = await put_folder(tusk, "raw_data", {"/iris.csv": iris})
    await create_pipeline(tusk, "ml/hyperparameter/split.pipeline.json")
    job = await finished_job(tusk, "split", [commit])
    assert counts(job) == (1, 0, 1)
    files = await output_files(tusk, "split", job["output_commit"])
    assert sorted(files) == ["/test.csv", "/train.csv"]
    train = files["/train.csv"].splitlines(keepends=True)
    test = files["/test.csv"].splitlines(keepends=True)
    # The 100 rows shuffled (shuf): the first 80 to train, the last 20 to test, none lost.
    assert (len(train), len(test)) == (80, 20)
    assert sorted(train + test) == sorted(iris.splitlines(keepends=True))


# What the model stage writes (one pickle per C and gamma) and what the test stage scores them.
C_VALUES = ["0.031", "0.500", "8.000"]
GAMMA_VALUES = ["0.001", "0.250", "4.000"]


def models_and_metrics() -> tuple[dict[str, bytes], dict[str, bytes]]:
    rng = random.Random(77)
    models, metrics = {}, {}
    for c in C_VALUES:
        for gamma in GAMMA_VALUES:
            name = f"model_C{c}_G{gamma}"
            models[f"/{name}.pkl"] = b"\x80\x04\x95" + rng.randbytes(rng.randrange(900, 1500))
            # Two models tie for the best score; select keeps both.
            score = "0.95" if (c, gamma) in {("0.500", "0.250"), ("8.000", "0.001")} else None
            metrics[f"/{name}_metric.txt"] = (
                f"{score or rng.choice(['0.6', '0.85', '0.9'])}\n".encode()
            )
    return models, metrics


async def test_hyperparameter_select_links_the_best_models(tusk: Tusk) -> None:
    models, metrics = models_and_metrics()
    test_commit = await put_folder(tusk, "test", metrics)
    model_commit = await put_folder(tusk, "model", models)
    await create_pipeline(tusk, "ml/hyperparameter/select.pipeline.json")
    job = await finished_job(tusk, "select", [test_commit, model_commit])
    assert counts(job) == (1, 0, 1)
    best = max(float(score) for score in metrics.values())
    chosen = {
        path.removesuffix("_metric.txt") + ".pkl"
        for path, score in metrics.items()
        if float(score) == best
    }
    assert len(chosen) == 2
    # `ln -s /pfs/model/X.pkl /pfs/out/X.pkl`: the output holds the model itself.
    assert await output_files(tusk, "select", job["output_commit"]) == {
        path: models[path] for path in sorted(chosen)
    }
