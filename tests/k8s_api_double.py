"""A scripted Kubernetes API server: a TEST DOUBLE, not a cluster.

It speaks the real REST paths and JSON of the endpoints Tusk's Kubernetes backend
uses (Deployments in ``apps/v1``, Pods in ``v1``), with the API server's semantics
that matter to a client: ``resourceVersion`` bumps and 409 conflicts, 404 and 409
``Status`` bodies, label selectors, ``generation``. There are no controllers: a test
plays the ReplicaSet controller and the kubelet with ``make_pods`` and
``set_container_state``. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class ScriptedKubernetesApi:
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # Status codes to answer the next matching "METHOD path" with, once each.
    failures: dict[str, list[int]] = field(default_factory=dict)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    # --- what tests look at and script ----------------------------------------------

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    def make_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Play the ReplicaSet controller: pods for the Deployment's replicas, from its
        template, running and ready (older pods of the Deployment are replaced)."""
        deployment = self.deployments[(namespace, name)]
        for key in [k for k, p in self.pods.items() if p["metadata"].get("x-owner") == name]:
            del self.pods[key]
        made = []
        for i in range(deployment["spec"]["replicas"]):
            template = copy.deepcopy(deployment["spec"]["template"])
            pod_name = f"{name}-{deployment['metadata']['generation']}-{i}"
            metadata = {**template["metadata"], "name": pod_name, "namespace": namespace}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        _container_status(c["name"], c["image"], {"running": {}})
                        for c in template["spec"]["containers"]
                    ],
                },
            }
            self._stamp(pod)
            pod["metadata"]["x-owner"] = name
            self.pods[(namespace, pod_name)] = pod
            made.append(pod)
        return made

    def set_container_state(
        self,
        namespace: str,
        pod: str,
        container: str,
        state: dict[str, Any],
        *,
        last_state: dict[str, Any] | None = None,
        restarts: int = 0,
    ) -> None:
        """Play the kubelet: a container's state changes, the pod is no longer ready."""
        status = self.pods[(namespace, pod)]["status"]
        for entry in status["containerStatuses"]:
            if entry["name"] == container:
                entry.update(state=state, ready=False, restartCount=restarts)
                entry["lastState"] = last_state or {}
        status["conditions"] = [{"type": "Ready", "status": "False"}]
        self._stamp(self.pods[(namespace, pod)])

    def add_pod(self, pod: dict[str, Any]) -> None:
        pod = copy.deepcopy(pod)
        self._stamp(pod)
        self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod

    # --- the server --------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        deployments = "/apis/apps/v1/namespaces/{ns}/deployments"
        pods = "/api/v1/namespaces/{ns}/pods"
        app.router.add_get(deployments, self._list_deployments)
        app.router.add_post(deployments, self._create_deployment)
        app.router.add_get(deployments + "/{name}", self._get_deployment)
        app.router.add_put(deployments + "/{name}", self._replace_deployment)
        app.router.add_delete(deployments + "/{name}", self._delete_deployment)
        app.router.add_get(pods, self._list_pods)
        app.router.add_get(pods + "/{name}", self._get_pod)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.method, request.path, dict(request.query), body))
        planned = self.failures.get(f"{request.method} {request.path}")
        if planned:
            code = planned.pop(0)
            return _status(code, "Scripted", f"scripted failure {code}")
        response: web.StreamResponse = await handler(request)
        return response

    def _stamp(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['resourceVersion']}")
        obj["metadata"].setdefault("creationTimestamp", "2025-01-01T00:00:00Z")

    async def _list_deployments(self, request: web.Request) -> web.Response:
        items = _select(self.deployments, request)
        return _json({"apiVersion": "apps/v1", "kind": "DeploymentList", **_list_meta(items)})

    async def _get_deployment(self, request: web.Request) -> web.Response:
        found = self.deployments.get((request.match_info["ns"], request.match_info["name"]))
        if found is None:
            return _not_found("deployments.apps", request.match_info["name"])
        return _json(found)

    async def _create_deployment(self, request: web.Request) -> web.Response:
        body = await request.json()
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        if (ns, name) in self.deployments:
            return _status(409, "AlreadyExists", f'deployments.apps "{name}" already exists')
        body["metadata"].update(namespace=ns, generation=1)
        body["status"] = {}
        self._stamp(body)
        self.deployments[(ns, name)] = body
        return _json(body, 201)

    async def _replace_deployment(self, request: web.Request) -> web.Response:
        body = await request.json()
        ns, name = request.match_info["ns"], request.match_info["name"]
        found = self.deployments.get((ns, name))
        if found is None:
            return _not_found("deployments.apps", name)
        sent_version = body["metadata"].get("resourceVersion")
        if sent_version and sent_version != found["metadata"]["resourceVersion"]:
            return _status(
                409, "Conflict", f'Operation cannot be fulfilled on deployments.apps "{name}"'
            )
        if body["spec"]["selector"] != found["spec"]["selector"]:
            return _status(422, "Invalid", "spec.selector: Invalid value: field is immutable")
        generation = found["metadata"]["generation"]
        if body["spec"] != found["spec"]:
            generation += 1
        body["metadata"].update(namespace=ns, generation=generation, uid=found["metadata"]["uid"])
        body["status"] = found.get("status", {})
        self._stamp(body)
        self.deployments[(ns, name)] = body
        return _json(body)

    async def _delete_deployment(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if self.deployments.pop((ns, name), None) is None:
            return _not_found("deployments.apps", name)
        # The garbage collector's part: the Deployment's pods go too.
        for key in [k for k, p in self.pods.items() if p["metadata"].get("x-owner") == name]:
            del self.pods[key]
        return _status(200, "", "", status="Success")

    async def _list_pods(self, request: web.Request) -> web.Response:
        items = [_public(p) for p in _select(self.pods, request)]
        return _json({"apiVersion": "v1", "kind": "PodList", **_list_meta(items)})

    async def _get_pod(self, request: web.Request) -> web.Response:
        found = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if found is None:
            return _not_found("pods", request.match_info["name"])
        return _json(_public(found))


def _container_status(name: str, image: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


def _public(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"].pop("x-owner", None)
    return pod


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term not in labels:
            return False
    return True


def _select(store: dict[tuple[str, str], dict[str, Any]], request: web.Request) -> list[Any]:
    ns = request.match_info["ns"]
    selector = request.query.get("labelSelector", "")
    return [
        obj
        for (obj_ns, _), obj in sorted(store.items())
        if obj_ns == ns and _matches(obj["metadata"].get("labels") or {}, selector)
    ]


def _list_meta(items: list[Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "1"}, "items": items}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _status(code: int, reason: str, message: str, *, status: str = "Failure") -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": status,
        "message": message,
        "reason": reason,
        "code": code,
    }
    return _json(body, code)


def _not_found(kind: str, name: str) -> web.Response:
    return _status(404, "NotFound", f'{kind} "{name}" not found')
