"""deploy/k8s: every kustomization renders, every object is valid for a current Kubernetes
(strict: unknown fields refused), and the objects agree with each other and with the code."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.scheduler.backends import WorkerSet
from services.scheduler.backends.k8s_objects import K8sSettings, worker_deployment
from shared.pipeline.spec import parse_pipeline_spec
from shared.platform.http import host_allowed

K8S_VERSION = "1.33.0"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml")
)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# What each Tusk service listens on (its __main__'s default port).
SERVICE_PORTS = {
    "pfs": 7651,
    "pps": 7652,
    "scheduler": 7653,
    "mountd": 7654,
    "s3gateway": 7655,
    "console": 7656,
}

# kustomize renders through kubectl; a missing one fails (tests/fixtures/parts.py).
pytestmark = pytest.mark.usefixtures("kubectl")


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any] | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj["metadata"]["name"], obj["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_keys(secret: dict[str, Any]) -> set[str]:
    return {*secret.get("data", {}), *secret.get("stringData", {})}


def check_refs(objects: tuple[dict[str, Any], ...], pod: dict[str, Any], where: str) -> None:
    """Every ConfigMap, Secret and key the pod names exists (unless marked optional)."""
    for container in containers(pod):
        for source in container.get("envFrom", []):
            for ref_kind, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if ref_kind in source and not source[ref_kind].get("optional"):
                    assert find(objects, kind, source[ref_kind]["name"]), (where, source)
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            if "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                config_map = find(objects, "ConfigMap", ref["name"])
                assert config_map and ref["key"] in config_map["data"], (where, ref)
            if "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                secret = find(objects, "Secret", ref["name"])
                assert secret and ref["key"] in secret_keys(secret), (where, ref)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_is_valid_for_kubernetes(kustomization: str) -> None:
    objects = render(kustomization)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_service_selects_pods_on_a_port_they_open(kustomization: str) -> None:
    objects = render(kustomization)
    pods = list(pod_specs(objects))
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [pod for _, pod in pods if selector.items() <= pod["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            opened = [
                p
                for pod in selected
                for c in containers(pod)
                for p in c.get("ports", [])
                if target in (p.get("name"), p["containerPort"])
            ]
            assert opened, f"Service {service['metadata']['name']} targets closed port {target}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_reference_resolves(kustomization: str) -> None:
    objects = render(kustomization)
    for name, pod in pod_specs(objects):
        check_refs(objects, pod, name)
        account = pod["spec"].get("serviceAccountName")
        if account:
            assert find(objects, "ServiceAccount", account), (name, account)
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert find(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for subject in binding["subjects"]:
            assert find(objects, subject["kind"], subject["name"]), subject


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_configured_addresses_name_services_that_exist(kustomization: str) -> None:
    """A URL to an in-cluster name (no dots) must be a Service with that port: the
    external-services overlay must not point at the bundled services it removed."""
    objects = render(kustomization)
    values = {**find(objects, "ConfigMap", "tusk-config")["data"]}  # type: ignore[index]
    values.update(find(objects, "Secret", "tusk-secrets")["stringData"])  # type: ignore[index]
    for key, value in values.items():
        if not (key.endswith("_URL") and "://" in value):
            continue
        url = urlsplit(value)
        if url.hostname and "." not in url.hostname:
            service = find(objects, "Service", url.hostname)
            assert service, f"{key} names {url.hostname}, which is not a Service here"
            assert url.port in [p["port"] for p in service["spec"]["ports"]], (key, value)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_configured_tusk_address_is_an_allowed_host(kustomization: str) -> None:
    """Services refuse a Host they are not configured for (421): each address clients and
    workers are given must be one the services answer to, in each of its usual forms."""
    config = find(render(kustomization), "ConfigMap", "tusk-config")
    assert config is not None
    allowed = tuple(config["data"]["TUSK_ALLOWED_HOSTS"].split(","))
    for name in SERVICE_PORTS:
        url = config["data"][f"TUSK_{name.upper()}_URL"]
        host = urlsplit(url).netloc
        assert host_allowed(host, allowed), (name, url)
        for form in (f"{name}.tusk", f"{name}.tusk.svc", f"{name}.tusk.svc.cluster.local"):
            assert host_allowed(form, allowed), form
    assert not host_allowed("evil.example", allowed)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_tusk_services_listen_where_probes_and_services_look(kustomization: str) -> None:
    objects = render(kustomization)
    for name, port in SERVICE_PORTS.items():
        deployment = find(objects, "Deployment", name)
        assert deployment, name
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", f"services.{name}"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["TUSK_LISTEN_PORT"] == str(port)
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        service = find(objects, "Service", name)
        assert service and service["spec"]["ports"][0]["port"] == port
    images = {
        c["image"]
        for _, pod in pod_specs(objects)
        for c in containers(pod)
        if c.get("command", [])[:2] == ["python", "-m"]
    }
    assert len(images) == 1, f"one image for every Tusk service, got {images}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_has_resources_and_probes(kustomization: str) -> None:
    for name, pod in pod_specs(render(kustomization)):
        for container in containers(pod):
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("memory"), (name, container["name"])
            assert resources.get("limits", {}).get("memory"), (name, container["name"])
            assert "readinessProbe" in container and "livenessProbe" in container, name


def test_scheduler_role_allows_exactly_what_the_backend_does() -> None:
    objects = render(".")
    role = find(objects, "Role", "tusk-scheduler")
    assert role
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # KubernetesBackend: list/create/replace(update)/delete Deployments, list Pods, get its own Pod.
    assert granted == {
        ("apps", "deployments", "list"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "update"),
        ("apps", "deployments", "delete"),
        ("", "pods", "list"),
        ("", "pods", "get"),
    }
    scheduler = find(objects, "Deployment", "scheduler")
    assert (
        scheduler
        and scheduler["spec"]["template"]["spec"]["serviceAccountName"] == "tusk-scheduler"
    )
    # No other pod gets an API token.
    for name, pod in pod_specs(objects):
        if name != "scheduler":
            assert pod["spec"].get("automountServiceAccountToken") is False, name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_worker_pods_find_their_configuration_in_the_install(kustomization: str) -> None:
    """The worker Deployment the backend makes names the install's ConfigMap and Secret."""
    objects = render(kustomization)
    namespace = find(objects, "Deployment", "scheduler")["metadata"]["namespace"]  # type: ignore[index]
    spec = parse_pipeline_spec(
        {
            "pipeline": {"name": "edges"},
            "transform": {"cmd": ["true"], "image": "alpine:3.20"},
            "input": {"pfs": {"repo": "images", "glob": "/*"}},
        }
    )
    deployment = worker_deployment(
        WorkerSet("edges", 1, spec), K8sSettings(namespace=namespace, worker_image="tusk")
    )
    check_refs(objects, deployment["spec"]["template"], "worker")
    # optional refs are checked too: the install provides the keys workers use.
    worker = deployment["spec"]["template"]["spec"]["containers"][1]
    secret = find(objects, "Secret", "tusk-secrets")
    for env in worker["env"]:
        if "valueFrom" in env:
            assert env["valueFrom"]["secretKeyRef"]["key"] in secret_keys(secret)  # type: ignore[arg-type]


def test_external_services_overlay_leaves_out_the_bundled_servers() -> None:
    objects = render("overlays/external-services")
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    assert "POSTGRES_PASSWORD" not in find(objects, "Secret", "tusk-secrets")["stringData"]  # type: ignore[index]
    bundled = render(".")
    assert {o["kind"] for o in bundled if o["kind"] == "StatefulSet"}
    for name in ("postgres", "nats", "seaweedfs"):
        statefulset = find(bundled, "StatefulSet", name)
        assert statefulset and statefulset["spec"]["volumeClaimTemplates"], name


def test_mountd_gets_only_what_fuse_needs() -> None:
    [container] = find(render("."), "Deployment", "mountd")["spec"]["template"]["spec"][
        "containers"
    ]  # type: ignore[index]
    context = container["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert not context.get("privileged")
    assert container["resources"]["limits"]["smarter-devices/fuse"] == "1"
