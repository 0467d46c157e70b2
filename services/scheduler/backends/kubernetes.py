"""The Kubernetes backend: one worker Deployment per running pipeline.

``reconcile`` is level-based, like a Kubernetes controller: it lists the Deployments
this backend owns (by label, so a restarted scheduler adopts what it made before),
creates the missing ones, replaces those whose template or replica count differ, and
deletes those of pipelines that are not running. A stopped pipeline's Deployment is
deleted rather than scaled to zero: the scheduler cannot tell "stopped" from
"deleted", the object is derived entirely from the spec, and a deleted pipeline must
leave nothing behind. Each reconcile also lists the worker pods and keeps, per
pipeline, why pods fail (``ImagePullBackOff``, ``CrashLoopBackOff``, ``OOMKilled``,
``Unschedulable`` …) for ``status()``.

Configuration (``settings_from_env``): ``TUSK_K8S_NAMESPACE`` (default: the pod's own
namespace), ``TUSK_K8S_WORKER_IMAGE`` (default: the image of the scheduler's own pod,
found through ``TUSK_K8S_POD_NAME``), ``TUSK_K8S_CONFIGMAP``, ``TUSK_K8S_SECRET``,
``TUSK_K8S_IMAGE_PULL_POLICY``. The API is reached with the in-cluster ServiceAccount,
else ``$KUBECONFIG`` / ``~/.kube/config``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from services.scheduler.backends import WorkerSet
from services.scheduler.backends.k8s_objects import (
    OWNED_SELECTOR,
    PIPELINE_ANNOTATION,
    VERSION_LABEL,
    K8sSettings,
    needs_update,
    pod_problems,
    pod_ready,
    worker_deployment,
)
from shared.platform.errors import FailedPrecondition, Unavailable

log = logging.getLogger("tusk.scheduler.kubernetes")

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class EnvSettings:
    """The settings as the environment gives them; the image may be found later."""

    settings: K8sSettings
    pod_name: str | None


def settings_from_env(environ: Mapping[str, str] | None = None) -> EnvSettings:
    """Read the ``TUSK_K8S_*`` variables (see the module doc)."""
    env = os.environ if environ is None else environ
    namespace = env.get("TUSK_K8S_NAMESPACE")
    if not namespace:
        try:
            namespace = _SA_NAMESPACE.read_text().strip()
        except OSError:
            namespace = "default"
    settings = K8sSettings(
        namespace=namespace,
        worker_image=env.get("TUSK_K8S_WORKER_IMAGE", ""),
        config_map=env.get("TUSK_K8S_CONFIGMAP", "tusk-config"),
        secret=env.get("TUSK_K8S_SECRET", "tusk-secrets"),
        image_pull_policy=env.get("TUSK_K8S_IMAGE_PULL_POLICY", "IfNotPresent"),
    )
    return EnvSettings(settings, env.get("TUSK_K8S_POD_NAME") or None)


async def load_api_configuration() -> client.Configuration:
    """The in-cluster ServiceAccount's configuration, else the kubeconfig's."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        try:
            await config.load_kube_config(client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise FailedPrecondition(
                f"kubernetes workers: no in-cluster ServiceAccount and no usable kubeconfig: {exc}"
            ) from None
    return configuration


def _body(obj: dict[str, Any]) -> Any:
    """The client sends a dict as it is: the exact object built and validated offline,
    rather than a model round trip that could drop a field the model does not know."""
    return cast(Any, obj)


def _api_error(action: str, exc: Exception) -> Exception:
    """Our error for a failed API call; the engine logs it and tries again next round."""
    if isinstance(exc, ApiException):
        if exc.status == 403:
            return FailedPrecondition(
                f"kubernetes workers: {action}: forbidden; the scheduler's ServiceAccount "
                f"needs the Role in deploy/k8s/base/rbac.yaml"
            )
        return Unavailable(f"kubernetes workers: {action}: {exc.status} {exc.reason}")
    return Unavailable(f"kubernetes workers: {action}: {exc}")


class KubernetesBackend:
    """Worker Deployments through the Kubernetes API (see the module doc).

    ``configuration`` is the API client's configuration; without it the backend loads
    the in-cluster or kubeconfig one at its first reconcile. ``pod_name`` is the
    scheduler's own pod, read for its image when ``settings.worker_image`` is empty.
    """

    def __init__(
        self,
        settings: K8sSettings,
        *,
        configuration: client.Configuration | None = None,
        pod_name: str | None = None,
    ) -> None:
        self._settings = settings
        self._configuration = configuration
        self._pod_name = pod_name
        self._api: client.ApiClient | None = None
        self._status: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KubernetesBackend:
        found = settings_from_env(environ)
        return cls(found.settings, pod_name=found.pod_name)

    async def _client(self) -> client.ApiClient:
        if self._api is None:
            configuration = self._configuration or await load_api_configuration()
            self._api = client.ApiClient(configuration=configuration)
        return self._api

    async def _settings_with_image(self, api: client.ApiClient) -> K8sSettings:
        if self._settings.worker_image:
            return self._settings
        if not self._pod_name:
            raise FailedPrecondition(
                "kubernetes workers: set TUSK_K8S_WORKER_IMAGE, or TUSK_K8S_POD_NAME so the "
                "scheduler can use its own image"
            )
        try:
            pod = await client.CoreV1Api(api).read_namespaced_pod(
                self._pod_name, self._settings.namespace
            )
        except (ApiException, aiohttp.ClientError) as exc:
            raise _api_error(f"reading the scheduler's pod {self._pod_name}", exc) from None
        image = pod.spec.containers[0].image
        self._settings = replace(self._settings, worker_image=image)
        log.info("worker pods use the scheduler's image %s", image)
        return self._settings

    async def reconcile(self, desired: Mapping[str, WorkerSet]) -> None:
        api = await self._client()
        settings = await self._settings_with_image(api)
        apps = client.AppsV1Api(api)
        ns = settings.namespace
        try:
            listed = await apps.list_namespaced_deployment(ns, label_selector=OWNED_SELECTOR)
        except (ApiException, aiohttp.ClientError) as exc:
            raise _api_error("listing worker deployments", exc) from None
        current: dict[str, dict[str, Any]] = {}
        for item in listed.items:
            body = api.sanitize_for_serialization(item)
            pipeline = (body["metadata"].get("annotations") or {}).get(PIPELINE_ANNOTATION)
            if pipeline is not None:
                current[pipeline] = body
        rejected: dict[str, str] = {}
        for name, ws in sorted(desired.items()):
            wanted = worker_deployment(ws, settings)
            have = current.pop(name, None)
            try:
                if have is None:
                    log.info("creating workers of %s v%d", name, ws.version)
                    await apps.create_namespaced_deployment(ns, _body(wanted))
                elif needs_update(have, wanted):
                    log.info("updating workers of %s to v%d", name, ws.version)
                    # resourceVersion: a concurrent change makes this a 409, retried next round.
                    wanted["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
                    await apps.replace_namespaced_deployment(
                        wanted["metadata"]["name"], ns, _body(wanted)
                    )
            except ApiException as exc:
                if exc.status in (400, 403, 422):
                    # This pipeline's object is refused; the others still get theirs.
                    rejected[name] = str(_api_error(f"writing the deployment of {name}", exc))
                    continue
                raise _api_error(f"writing the deployment of {name}", exc) from None
            except aiohttp.ClientError as exc:
                raise _api_error(f"writing the deployment of {name}", exc) from None
        for name, body in sorted(current.items()):
            log.info("deleting workers of %s (not running)", name)
            try:
                await apps.delete_namespaced_deployment(
                    body["metadata"]["name"], ns, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise _api_error(f"deleting the deployment of {name}", exc) from None
            except aiohttp.ClientError as exc:
                raise _api_error(f"deleting the deployment of {name}", exc) from None
        await self._observe(api, desired, rejected)

    async def _observe(
        self, api: client.ApiClient, desired: Mapping[str, WorkerSet], rejected: Mapping[str, str]
    ) -> None:
        """Keep, per running pipeline, its pods' readiness and problems for ``status()``."""
        try:
            listed = await client.CoreV1Api(api).list_namespaced_pod(
                self._settings.namespace, label_selector=OWNED_SELECTOR
            )
        except (ApiException, aiohttp.ClientError) as exc:
            raise _api_error("listing worker pods", exc) from None
        status: dict[str, dict[str, Any]] = {
            name: {
                "pipeline": name,
                "version": ws.version,
                "desired": ws.spec.parallelism,
                "pods": 0,
                "ready": 0,
                "problems": [],
            }
            for name, ws in desired.items()
        }
        for name, message in rejected.items():
            status[name]["problems"].append(
                {"pod": None, "container": None, "reason": "DeploymentRejected", "message": message}
            )
        for item in listed.items:
            pod = api.sanitize_for_serialization(item)
            metadata = pod.get("metadata") or {}
            entry = status.get((metadata.get("annotations") or {}).get(PIPELINE_ANNOTATION, ""))
            if entry is None:
                continue  # a pod of a deleted pipeline, on its way out
            if (metadata.get("labels") or {}).get(VERSION_LABEL) != str(entry["version"]):
                continue  # an old version's pod, terminating under the Recreate strategy
            if metadata.get("deletionTimestamp"):
                continue
            entry["pods"] += 1
            entry["ready"] += pod_ready(pod)
            entry["problems"].extend(pod_problems(pod))
        self._status = status

    async def close(self) -> None:
        """Close the API connection. Worker Deployments stay: a scheduler restarting or
        moving to another node must not stop every pipeline's workers."""
        if self._api is not None:
            await self._api.close()
            self._api = None

    def status(self) -> list[dict[str, Any]]:
        return [self._status[name] for name in sorted(self._status)]
