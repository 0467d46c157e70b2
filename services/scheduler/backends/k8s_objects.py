"""The Kubernetes objects of a pipeline's workers, and what a worker pod's status means.

Pure: dicts in, dicts out, no API calls (``kubernetes.py`` does those), so the exact
objects Tusk sends are tested and validated offline.

A worker pod has two containers sharing two ``emptyDir`` volumes:

- ``user`` runs the pipeline's ``transform.image`` (the Tusk image when the spec names
  none) with ``pod_sandbox.RUNNER_SCRIPT`` as its command: a POSIX ``sh`` loop, so any
  image with ``/bin/sh`` works. It runs each datum's command on request, in ``/pfs``.
- ``tusk-worker`` runs the Tusk image's datum worker with ``TUSK_DATUM_SANDBOX=pod``: it
  pulls tasks from NATS, materialises the datum into the shared ``/pfs`` volume, asks
  the runner to run the command over the shared ``/tusk`` control volume, and stores
  ``/pfs/out``. Credentials for NATS and the object store live only in this container.

The pod is the sandbox (no bubblewrap inside): unprivileged user namespaces are often
disabled in pods, and the container already gives the command its own root, PID and
mount namespaces. The pod gets no ServiceAccount token, so user code cannot call the
Kubernetes API.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.scheduler.backends import WorkerSet
from services.scheduler.backends.pod_sandbox import CTL_DIR, PFS_DIR, RUNNER_SCRIPT
from shared.pipeline.spec import Resources

# Labels on every object the backend owns; the list selector finds exactly these.
MANAGED_BY = {"app.kubernetes.io/managed-by": "tusk-scheduler"}
WORKER_LABELS = {"app.kubernetes.io/name": "tusk-worker", "app.kubernetes.io/part-of": "tusk"}
OWNED_SELECTOR = ",".join(f"{k}={v}" for k, v in {**WORKER_LABELS, **MANAGED_BY}.items())
PIPELINE_LABEL = "tusk.dev/pipeline"
VERSION_LABEL = "tusk.dev/pipeline-version"
# The exact pipeline name (a label value cannot hold every pipeline name) and the hash of
# everything the backend decided, so a changed image or setting rolls the workers too.
PIPELINE_ANNOTATION = "tusk.dev/pipeline"
TEMPLATE_HASH_ANNOTATION = "tusk.dev/template-hash"

USER_CONTAINER = "user"
WORKER_CONTAINER = "tusk-worker"
WORKER_UID = 10001

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_UNSAFE_RE = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True)
class K8sSettings:
    """What the backend needs besides the specs (``kubernetes.settings_from_env`` reads them)."""

    namespace: str
    # The Tusk image, for the worker sidecar and for specs without ``transform.image``.
    worker_image: str
    config_map: str = "tusk-config"
    secret: str = "tusk-secrets"
    image_pull_policy: str = "IfNotPresent"


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def deployment_name(pipeline: str) -> str:
    """``tusk-worker-<pipeline>`` as a DNS name; a hash suffix keeps names that only
    differ in case or ``_``/``-`` apart."""
    safe = _DNS_UNSAFE_RE.sub("-", pipeline.lower()).strip("-")
    if safe != pipeline:
        safe = f"{safe}-{_short_hash(pipeline)}".lstrip("-")
    return f"tusk-worker-{safe}"


def pipeline_label(pipeline: str) -> str:
    """The pipeline name if it is a valid label value (most are), else a stable hash."""
    return pipeline if _LABEL_VALUE_RE.match(pipeline) else f"h-{_short_hash(pipeline)}"


def selector_labels(pipeline: str) -> dict[str, str]:
    """The Deployment's selector: immutable, so it holds no version."""
    return {**WORKER_LABELS, PIPELINE_LABEL: pipeline_label(pipeline)}


def _cpu(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def _resource_list(resources: Resources | None, *, with_gpu: bool) -> dict[str, str]:
    if resources is None:
        return {}
    out: dict[str, str] = {}
    if resources.cpu is not None:
        out["cpu"] = _cpu(resources.cpu)
    if resources.memory is not None:
        out["memory"] = resources.memory
    if resources.disk is not None:
        out["ephemeral-storage"] = resources.disk
    if with_gpu and resources.gpu is not None:
        out[resources.gpu.type] = str(resources.gpu.number)
    return out


def user_resources(requests: Resources | None, limits: Resources | None) -> dict[str, Any]:
    """The spec's requests and limits for the user container. Kubernetes takes extended
    resources (GPUs) only as limits, so a GPU request becomes a limit too."""
    req = _resource_list(requests, with_gpu=False)
    lim = _resource_list(limits, with_gpu=True)
    for gpu in (requests.gpu if requests else None, limits.gpu if limits else None):
        if gpu is not None:
            lim.setdefault(gpu.type, str(gpu.number))
    out: dict[str, Any] = {}
    if req:
        out["requests"] = req
    if lim:
        out["limits"] = lim
    return out


_VOLUME_MOUNTS = [
    {"name": "pfs", "mountPath": PFS_DIR},
    {"name": "tusk-ctl", "mountPath": CTL_DIR},
]


def _user_container(ws: WorkerSet, settings: K8sSettings) -> dict[str, Any]:
    transform = ws.spec.transform
    container: dict[str, Any] = {
        "name": USER_CONTAINER,
        "image": transform.image or settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["/bin/sh", "-c", RUNNER_SCRIPT],
        "workingDir": PFS_DIR,
        "env": [{"name": k, "value": v} for k, v in sorted(transform.env.items())],
        "volumeMounts": _VOLUME_MOUNTS,
        # Ready once the runner listens for datums.
        "readinessProbe": {
            "exec": {"command": ["/bin/sh", "-c", f"test -p {CTL_DIR}/go"]},
            "periodSeconds": 5,
        },
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources = user_resources(ws.spec.resource_requests, ws.spec.resource_limits)
    if resources:
        container["resources"] = resources
    return container


def _worker_container(ws: WorkerSet, settings: K8sSettings) -> dict[str, Any]:
    def secret(var: str, key: str) -> dict[str, Any]:
        # optional: an object store without credentials (IAM roles) needs no keys.
        ref = {"name": settings.secret, "key": key, "optional": True}
        return {"name": var, "valueFrom": {"secretKeyRef": ref}}

    return {
        "name": WORKER_CONTAINER,
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "services.scheduler.worker", ws.pipeline],
        "envFrom": [{"configMapRef": {"name": settings.config_map}}],
        "env": [
            {"name": "TUSK_DATUM_SANDBOX", "value": "pod"},
            # Scratch on the shared volume, so handing a datum to the runner is a rename.
            {"name": "TMPDIR", "value": PFS_DIR},
            secret("TUSK_S3_ACCESS_KEY", "TUSK_S3_ACCESS_KEY"),
            secret("TUSK_S3_SECRET_KEY", "TUSK_S3_SECRET_KEY"),
        ],
        "volumeMounts": _VOLUME_MOUNTS,
        # The chunk cache is 256 MiB; the rest is the process and in-flight chunks.
        "resources": {
            "requests": {"cpu": "100m", "memory": "384Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def worker_deployment(ws: WorkerSet, settings: K8sSettings) -> dict[str, Any]:
    """The Deployment running ``ws.spec.parallelism`` worker pods of one pipeline version."""
    selector = selector_labels(ws.pipeline)
    labels = {**selector, **MANAGED_BY, VERSION_LABEL: str(ws.version)}
    template = {
        "metadata": {
            "labels": labels,
            "annotations": {PIPELINE_ANNOTATION: ws.pipeline},
        },
        "spec": {
            "automountServiceAccountToken": False,
            # Service variables would leak into the user's environment and collide.
            "enableServiceLinks": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [_user_container(ws, settings), _worker_container(ws, settings)],
            "volumes": [
                {"name": "pfs", "emptyDir": {}},
                {"name": "tusk-ctl", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            ],
        },
    }
    spec = {
        "replicas": ws.spec.parallelism,
        "selector": {"matchLabels": selector},
        # Old and new versions never run side by side: tasks of a new version must not
        # reach a pod of the old image.
        "strategy": {"type": "Recreate"},
        "template": template,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(ws.pipeline),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {PIPELINE_ANNOTATION: ws.pipeline, TEMPLATE_HASH_ANNOTATION: digest},
        },
        "spec": spec,
    }


def needs_update(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether the Deployment in the cluster differs from the one Tusk wants: another
    template (version, image, settings) or another replica count (someone scaled it)."""
    annotations = current.get("metadata", {}).get("annotations") or {}
    have_hash = annotations.get(TEMPLATE_HASH_ANNOTATION)
    want_hash = wanted["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    return bool(
        have_hash != want_hash or current["spec"].get("replicas") != wanted["spec"]["replicas"]
    )


# --- reading pod status ------------------------------------------------------------------

# Waiting reasons that mean the pod will not work without someone fixing something.
FAILING_WAIT_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _problem(pod: str, container: str | None, reason: str, message: str) -> dict[str, Any]:
    return {"pod": pod, "container": container, "reason": reason, "message": message}


def _container_problem(pod: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
    name = status.get("name")
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    if waiting.get("reason") in FAILING_WAIT_REASONS:
        message = waiting.get("message") or ""
        if last.get("reason"):
            # CrashLoopBackOff alone hides why: say how the last run ended.
            message = f"{message} (last exit: {last['reason']}, code {last.get('exitCode')})"
        problem = _problem(pod, name, waiting["reason"], message.strip())
    elif "OOMKilled" in (terminated.get("reason"), last.get("reason")):
        problem = _problem(pod, name, "OOMKilled", "the container ran out of memory (its limit)")
    else:
        return None
    problem["restarts"] = status.get("restartCount", 0)
    return problem


def pod_problems(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Why a worker pod is not working, one entry per failing container (or the pod):
    ``{"pod", "container", "reason", "message", "restarts"}``; ``[]`` for a healthy pod."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return [_problem(name, None, status.get("reason") or "Failed", status.get("message") or "")]
    problems = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "Unschedulable"
            problems.append(_problem(name, None, reason, condition.get("message") or ""))
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            problem = _container_problem(name, container)
            if problem is not None:
                problems.append(problem)
    return problems


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
