"""The Kubernetes worker backend, against a scripted API server (tests/k8s_api_double.py),
and the pod runner protocol, against the real runner script in ``sh``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from services.scheduler.backends import WorkerSet
from services.scheduler.backends.k8s_objects import (
    K8sSettings,
    deployment_name,
    pipeline_label,
    pod_problems,
    worker_deployment,
)
from services.scheduler.backends.kubernetes import KubernetesBackend, settings_from_env
from services.scheduler.backends.pod_sandbox import RUNNER_SCRIPT, PodSandbox, run_script
from services.scheduler.sandbox import SandboxSettings
from shared.pipeline.spec import parse_pipeline_spec
from shared.platform.config import load_config
from shared.platform.errors import FailedPrecondition, InvalidArgument, Unavailable
from tests.fixtures.parts import binary_missing, require
from tests.k8s_api_double import ScriptedKubernetesApi

K8S_VERSION = "1.33.0"
NS = "tusk"
SETTINGS = K8sSettings(namespace=NS, worker_image="registry.example/tusk:0.1.0")


def spec(
    name: str = "edges", *, parallelism: int = 2, image: str | None = "alpine:3.20", **extra: Any
) -> Any:
    raw: dict[str, Any] = {
        "pipeline": {"name": name},
        "transform": {
            "cmd": ["sh", "-c", "cp -r /pfs/images/* /pfs/out/"],
            "env": {"MODE": "fast"},
        },
        "input": {"pfs": {"repo": "images", "glob": "/*"}},
        "parallelism_spec": {"constant": parallelism},
        **extra,
    }
    if image is not None:
        raw["transform"]["image"] = image
    return parse_pipeline_spec(raw)


def worker_set(name: str = "edges", version: int = 1, **kw: Any) -> WorkerSet:
    return WorkerSet(name, version, spec(name, **kw))


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture
async def api() -> AsyncIterator[tuple[ScriptedKubernetesApi, client.Configuration]]:
    double = ScriptedKubernetesApi()
    runner = web.AppRunner(double.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    try:
        yield double, configuration
    finally:
        await runner.cleanup()


@pytest.fixture
async def backend(
    api: tuple[ScriptedKubernetesApi, client.Configuration],
) -> AsyncIterator[KubernetesBackend]:
    worker_backend = KubernetesBackend(SETTINGS, configuration=api[1])
    try:
        yield worker_backend
    finally:
        await worker_backend.close()


# --- the objects --------------------------------------------------------------------------


def test_worker_deployment_is_valid_kubernetes_and_carries_the_spec() -> None:
    ws = worker_set(
        resource_requests={"cpu": 0.5, "memory": "1Gi", "disk": "10Gi"},
        resource_limits={"memory": "2Gi", "gpu": {"type": "nvidia.com/gpu", "number": 1}},
    )
    deployment = worker_deployment(ws, SETTINGS)
    validate(deployment)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["tusk.dev/pipeline"] == "edges"
    assert pod["metadata"]["labels"]["tusk.dev/pipeline-version"] == "1"
    assert pod["spec"]["automountServiceAccountToken"] is False
    user, worker = pod["spec"]["containers"]
    assert user["image"] == "alpine:3.20"
    assert user["command"] == ["/bin/sh", "-c", RUNNER_SCRIPT]
    assert {"name": "MODE", "value": "fast"} in user["env"]
    assert user["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "10Gi"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
    }
    assert worker["image"] == SETTINGS.worker_image
    assert worker["command"][-1] == "edges"
    assert worker["securityContext"]["runAsNonRoot"] is True
    # Credentials reach only the Tusk container, never the user's.
    assert "envFrom" not in user and all("valueFrom" not in e for e in user["env"])


def test_spec_without_image_runs_in_the_tusk_image() -> None:
    deployment = worker_deployment(worker_set(image=None), SETTINGS)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == SETTINGS.worker_image


def test_names_of_any_pipeline_are_valid_kubernetes_names() -> None:
    for name in ("Edges_v2", "-x", "a" * 63, "x_"):
        deployment = worker_deployment(worker_set(name), SETTINGS)
        validate(deployment)
        assert deployment["metadata"]["annotations"]["tusk.dev/pipeline"] == name
    assert deployment_name("A_b") != deployment_name("a-b")
    assert pipeline_label("x_") != "x_"


def test_settings_come_from_the_environment() -> None:
    found = settings_from_env(
        {"TUSK_K8S_NAMESPACE": "data", "TUSK_K8S_POD_NAME": "sched-1", "TUSK_K8S_SECRET": "s"}
    )
    assert found.settings.namespace == "data"
    assert found.settings.worker_image == ""
    assert found.settings.secret == "s"
    assert found.pod_name == "sched-1"


# --- reconcile against the scripted API server ----------------------------------------------


async def test_reconcile_creates_one_valid_deployment_per_pipeline_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    await backend.reconcile(
        {"edges": worker_set("edges"), "stats": worker_set("stats", parallelism=3)}
    )
    posts = [r for r in double.writes() if r.method == "POST"]
    assert [r.path for r in posts] == [f"/apis/apps/v1/namespaces/{NS}/deployments"] * 2
    for request in posts:
        validate(request.body)
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in double.deployments.values()}
    assert replicas == {"tusk-worker-edges": 2, "tusk-worker-stats": 3}
    # Nothing changed: a second round writes nothing.
    before = len(double.writes())
    await backend.reconcile(
        {"edges": worker_set("edges"), "stats": worker_set("stats", parallelism=3)}
    )
    assert len(double.writes()) == before


async def test_new_spec_version_replaces_the_deployment_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    await backend.reconcile({"edges": worker_set(version=1)})
    await backend.reconcile({"edges": worker_set(version=2, parallelism=4, image="alpine:3.21")})
    put = double.writes()[-1]
    assert put.method == "PUT" and put.path.endswith("/deployments/tusk-worker-edges")
    validate(put.body)
    stored = double.deployments[(NS, "tusk-worker-edges")]
    assert stored["spec"]["replicas"] == 4
    assert stored["spec"]["template"]["metadata"]["labels"]["tusk.dev/pipeline-version"] == "2"
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "alpine:3.21"
    assert stored["metadata"]["generation"] == 2


async def test_scaled_by_hand_is_scaled_back_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    await backend.reconcile({"edges": worker_set(parallelism=2)})
    double.deployments[(NS, "tusk-worker-edges")]["spec"]["replicas"] = 7
    await backend.reconcile({"edges": worker_set(parallelism=2)})
    assert double.deployments[(NS, "tusk-worker-edges")]["spec"]["replicas"] == 2


async def test_stopped_or_deleted_pipeline_loses_its_deployment_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    await backend.reconcile({"edges": worker_set("edges"), "stats": worker_set("stats")})
    double.make_pods(NS, "tusk-worker-edges")
    await backend.reconcile({"stats": worker_set("stats")})
    delete = double.writes()[-1]
    assert delete.method == "DELETE" and delete.path.endswith("/deployments/tusk-worker-edges")
    assert delete.query.get("propagationPolicy") == "Background"
    assert set(double.deployments) == {(NS, "tusk-worker-stats")}
    assert [s["pipeline"] for s in backend.status()] == ["stats"]


async def test_restarted_scheduler_adopts_and_cleans_what_it_made_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, configuration = api
    await backend.reconcile({"edges": worker_set("edges"), "old": worker_set("old")})
    fresh = KubernetesBackend(SETTINGS, configuration=configuration)
    try:
        writes = len(double.writes())
        await fresh.reconcile({"edges": worker_set("edges")})
        assert [r.method for r in double.writes()[writes:]] == ["DELETE"]
    finally:
        await fresh.close()


async def test_foreign_deployments_are_left_alone_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    foreign = worker_deployment(worker_set("mine"), SETTINGS)
    foreign["metadata"]["name"] = "someone-else"
    foreign["metadata"]["labels"] = {"app": "other"}
    double.deployments[(NS, "someone-else")] = foreign
    await backend.reconcile({})
    assert (NS, "someone-else") in double.deployments


async def test_image_pull_backoff_shows_in_status_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    desired = {"edges": worker_set(parallelism=2)}
    await backend.reconcile(desired)
    pods = double.make_pods(NS, "tusk-worker-edges")
    await backend.reconcile(desired)
    [entry] = backend.status()
    assert entry == {
        "pipeline": "edges",
        "version": 1,
        "desired": 2,
        "pods": 2,
        "ready": 2,
        "problems": [],
    }
    message = 'Back-off pulling image "alpine:3.20-typo"'
    double.set_container_state(
        NS,
        pods[0]["metadata"]["name"],
        "user",
        {"waiting": {"reason": "ImagePullBackOff", "message": message}},
    )
    await backend.reconcile(desired)
    [entry] = backend.status()
    assert entry["ready"] == 1
    [problem] = entry["problems"]
    assert problem["reason"] == "ImagePullBackOff"
    assert problem["container"] == "user"
    assert problem["pod"] == pods[0]["metadata"]["name"]
    assert message in problem["message"]


async def test_crash_loop_after_oom_names_both_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    desired = {"edges": worker_set(parallelism=1)}
    await backend.reconcile(desired)
    [pod] = double.make_pods(NS, "tusk-worker-edges")
    double.set_container_state(
        NS,
        pod["metadata"]["name"],
        "user",
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
        last_state={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        restarts=3,
    )
    await backend.reconcile(desired)
    [problem] = backend.status()[0]["problems"]
    assert problem["reason"] == "CrashLoopBackOff"
    assert "OOMKilled" in problem["message"]
    assert problem["restarts"] == 3


async def test_pods_of_the_old_version_are_not_counted_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    await backend.reconcile({"edges": worker_set(version=1)})
    [old, _] = double.make_pods(NS, "tusk-worker-edges")
    double.set_container_state(
        NS, old["metadata"]["name"], "user", {"waiting": {"reason": "CrashLoopBackOff"}}
    )
    await backend.reconcile({"edges": worker_set(version=2)})
    [entry] = backend.status()
    assert entry["version"] == 2 and entry["pods"] == 0 and entry["problems"] == []


async def test_refused_deployment_is_a_problem_of_that_pipeline_only_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    double.failures[f"POST /apis/apps/v1/namespaces/{NS}/deployments"] = [422]
    await backend.reconcile({"a": worker_set("a"), "b": worker_set("b")})
    status = {s["pipeline"]: s for s in backend.status()}
    assert status["a"]["problems"][0]["reason"] == "DeploymentRejected"
    assert status["b"]["problems"] == []
    assert (NS, "tusk-worker-b") in double.deployments
    await backend.reconcile({"a": worker_set("a"), "b": worker_set("b")})
    assert (NS, "tusk-worker-a") in double.deployments


async def test_api_errors_become_tusk_errors_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration], backend: KubernetesBackend
) -> None:
    double, _ = api
    listing = f"GET /apis/apps/v1/namespaces/{NS}/deployments"
    double.failures[listing] = [503, 403]
    with pytest.raises(Unavailable):
        await backend.reconcile({"edges": worker_set()})
    with pytest.raises(FailedPrecondition, match="forbidden"):
        await backend.reconcile({"edges": worker_set()})


async def test_worker_image_defaults_to_the_schedulers_own_against_scripted_api_server(
    api: tuple[ScriptedKubernetesApi, client.Configuration],
) -> None:
    double, configuration = api
    double.add_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "scheduler-abc", "namespace": NS},
            "spec": {"containers": [{"name": "scheduler", "image": "reg.example/tusk:9"}]},
        }
    )
    backend = KubernetesBackend(
        K8sSettings(namespace=NS, worker_image=""),
        configuration=configuration,
        pod_name="scheduler-abc",
    )
    try:
        await backend.reconcile({"edges": worker_set(image=None)})
    finally:
        await backend.close()
    containers = double.deployments[(NS, "tusk-worker-edges")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert [c["image"] for c in containers] == ["reg.example/tusk:9", "reg.example/tusk:9"]


def test_pod_problems_read_eviction_and_unschedulable() -> None:
    evicted = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted"}}
    assert pod_problems(evicted)[0]["reason"] == "Evicted"
    pending = {
        "metadata": {"name": "q"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    [problem] = pod_problems(pending)
    assert problem["reason"] == "Unschedulable" and "gpu" in problem["message"]


# --- the pod runner protocol, with the real script in sh ------------------------------------


@pytest.fixture
def pod_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The runner in ``sh`` as PID 1 of its own PID namespace, as in a container."""
    require(binary_missing("unshare"), "unshare (util-linux)")
    pfs, ctl = tmp_path / "pfs", tmp_path / "tusk"
    pfs.mkdir()
    ctl.mkdir()
    env = {"TUSK_CTL": str(ctl), "TUSK_PFS": str(pfs), "PATH": "/usr/bin:/bin"}
    # --kill-child: killing unshare must take the runner (PID 1 of its namespace) along.
    argv = ["unshare", "--kill-child", "--pid", "--fork", "--mount-proc", "sh", "-c", RUNNER_SCRIPT]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while not (ctl / "go").exists():
        if proc.poll() is not None:
            pytest.fail(f"cannot make a PID namespace here: {proc.stderr.read().decode()[:200]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the runner did not make its FIFOs")
        time.sleep(0.01)
    try:
        yield pfs, ctl
    finally:
        proc.kill()
        proc.wait()


def _scratch(pfs: Path) -> tuple[dict[str, Path], Path]:
    """A datum's directories as the datum runner makes them, on the shared volume."""
    scratch = pfs / "tusk-worker-edges-x" / "datum-1" / "pfs"
    (scratch / "images").mkdir(parents=True)
    (scratch / "images" / "a.txt").write_text("hello\n")
    (scratch / "out").mkdir()
    return {"images": scratch / "images"}, scratch / "out"


async def test_pod_sandbox_runs_the_command_in_the_runner(pod_dirs: tuple[Path, Path]) -> None:
    pfs, ctl = pod_dirs
    sandbox = PodSandbox(pfs=pfs, ctl=ctl, ready_timeout=5)
    inputs, out = _scratch(pfs)
    cmd = [
        "sh",
        "-c",
        'read line; tr a-z A-Z < "$TUSK_PFS/images/a.txt" > out/a.txt; echo "$line"; exit 3',
    ]
    env = sandbox.environment({"TUSK_PFS": str(pfs), "my-input": "odd-name"})
    run = await sandbox.run(sandbox.argv(cmd, inputs=inputs, out=out), ["first"], env, None)
    assert run.exit_code == 3 and not run.timed_out
    assert run.logs == "first\n"
    # The directories are back where the datum runner left them, output inside.
    assert (out / "a.txt").read_text() == "HELLO\n"
    assert (inputs["images"] / "a.txt").exists() and not (pfs / "out").exists()
    # The next datum runs in the same runner.
    # (``env``, not ``sh``: sh drops variables whose names are not identifiers.)
    again = await sandbox.run(sandbox.argv(["env"], inputs={}, out=out), [], env, None)
    assert again.exit_code == 0 and "my-input=odd-name" in again.logs.splitlines()


async def test_pod_sandbox_timeout_kills_everything_the_command_forked(
    pod_dirs: tuple[Path, Path],
) -> None:
    pfs, ctl = pod_dirs
    sandbox = PodSandbox(pfs=pfs, ctl=ctl, ready_timeout=5, kill_grace=5)
    inputs, out = _scratch(pfs)
    marker = pfs / "late"
    cmd = ["sh", "-c", f"(sleep 1; touch {marker}) & sleep 30"]
    started = time.monotonic()
    run = await sandbox.run(sandbox.argv(cmd, inputs=inputs, out=out), [], {}, 0.3)
    assert run.timed_out and run.exit_code is None
    assert time.monotonic() - started < 3
    await asyncio.sleep(1.5)
    assert not marker.exists()  # the forked child died with the command
    assert (
        await sandbox.run(sandbox.argv(["true"], inputs={}, out=out), [], {}, None)
    ).exit_code == 0


async def test_pod_sandbox_refuses_a_symlinked_out(pod_dirs: tuple[Path, Path]) -> None:
    pfs, ctl = pod_dirs
    sandbox = PodSandbox(pfs=pfs, ctl=ctl, ready_timeout=5)
    inputs, out = _scratch(pfs)
    cmd = ["sh", "-c", "rm -rf out && ln -s /etc out"]
    await sandbox.run(sandbox.argv(cmd, inputs=inputs, out=out), [], {}, None)
    assert out.is_dir() and not out.is_symlink() and list(out.iterdir()) == []


async def test_pod_sandbox_without_runner_says_why(tmp_path: Path) -> None:
    sandbox = PodSandbox(pfs=tmp_path, ctl=tmp_path, ready_timeout=0.2)
    with pytest.raises(FailedPrecondition, match="user container"):
        await sandbox.run(sandbox.argv(["true"], inputs={}, out=None), [], {}, None)


def test_run_script_quotes_everything() -> None:
    script = run_script(["echo", "it's $HOME"], {"A": "x y", "b-c": "1"})
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == "it's $HOME\n"


def test_run_script_starts_in_the_working_dir(tmp_path: Path) -> None:
    script = run_script(["pwd"], {}, str(tmp_path))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == f"{tmp_path}\n"
    missing = run_script(["pwd"], {}, str(tmp_path / "nowhere"))
    assert subprocess.run(["sh", "-c", missing], capture_output=True, check=False).returncode == 1


def test_pod_sandbox_refuses_what_its_user_container_cannot_honour(tmp_path: Path) -> None:
    sandbox = PodSandbox(pfs=tmp_path, ctl=tmp_path)
    with pytest.raises(InvalidArgument, match="user is not supported"):
        sandbox.argv(["true"], inputs={}, out=None, settings=SandboxSettings(user=(1, 1)))
    mounts = ((tmp_path, "/etc/creds"),)
    with pytest.raises(InvalidArgument, match="mount_path are not supported"):
        sandbox.argv(["true"], inputs={}, out=None, settings=SandboxSettings(mounts=mounts))


async def test_datum_runs_through_the_pod_runner_end_to_end(
    pod_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The worker's datum runner with a PodSandbox: inputs in, command in the runner,
    /pfs/out stored, scratch cleaned, as in a worker pod."""
    from services.scheduler.datum_runner import run_datum
    from shared.storage.objstore.local import LocalStore
    from tests.test_datum_runner import make_input, make_task, output_files

    pfs, ctl = pod_dirs
    store = LocalStore(tmp_path / "store")
    try:
        source = await make_input(store, {"/img/cat.png": b"CAT", "/img/dog.png": b"DOG"})
        script = "mkdir out/deep && cat in/img/cat.png in/img/dog.png > out/deep/both && echo ok"
        workdir = pfs / "tusk-worker-edges-1"  # TMPDIR is /pfs in the pod
        workdir.mkdir()
        task = make_task([source], script)
        result = await run_datum(store, task, workdir=workdir, sandbox=PodSandbox(pfs=pfs, ctl=ctl))
        assert (result.state, result.exit_code, result.logs) == ("SUCCESS", 0, "ok\n")
        assert await output_files(store, result) == {"/deep/both": b"CATDOG"}  # type: ignore[arg-type]
        assert list(workdir.iterdir()) == []
        assert sorted(p.name for p in pfs.iterdir()) == ["tusk-worker-edges-1"]
    finally:
        await store.close()


def test_worker_uses_the_pod_sandbox_when_told(tmp_path: Path) -> None:
    from services.scheduler.worker import _sandbox

    no_file = tmp_path / "config.toml"
    told = load_config(no_file, {"TUSK_DATUM_SANDBOX": "pod"})
    assert isinstance(_sandbox(told), PodSandbox)
    assert _sandbox(load_config(no_file, {})) is None
