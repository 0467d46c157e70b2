"""The HTTP client SDK for PPS: pipelines, jobs, datums, logs and secrets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from shared.api.pfs_client import ServiceClient
from shared.api.pps_models import DatumInfo, JobInfo, LogLine, PipelineInfo, SecretInfo


def _q(part: str) -> str:
    return quote(part, safe="")


class PpsClient(ServiceClient):
    async def create_pipeline(
        self, spec: dict[str, Any], *, update: bool = False, reprocess: bool = False
    ) -> PipelineInfo:
        body = await self.request(
            "POST",
            "/v1/pipelines",
            json_body={"spec": spec},
            params={"update": update, "reprocess": reprocess},
        )
        return PipelineInfo.from_json(body)

    async def list_pipelines(self) -> list[PipelineInfo]:
        body = await self.request("GET", "/v1/pipelines")
        return [PipelineInfo.from_json(p) for p in body["pipelines"]]

    async def inspect_pipeline(self, name: str) -> PipelineInfo:
        return PipelineInfo.from_json(await self.request("GET", f"/v1/pipelines/{_q(name)}"))

    async def pipeline_history(self, name: str) -> list[dict[str, Any]]:
        body = await self.request("GET", f"/v1/pipelines/{_q(name)}/history")
        return list(body["versions"])

    async def stop_pipeline(self, name: str) -> PipelineInfo:
        return PipelineInfo.from_json(await self.request("POST", f"/v1/pipelines/{_q(name)}/stop"))

    async def start_pipeline(self, name: str) -> PipelineInfo:
        return PipelineInfo.from_json(await self.request("POST", f"/v1/pipelines/{_q(name)}/start"))

    async def delete_pipeline(self, name: str, *, keep_repo: bool = False) -> None:
        await self.request("DELETE", f"/v1/pipelines/{_q(name)}", params={"keep_repo": keep_repo})

    async def list_jobs(self, pipeline: str | None = None, *, limit: int = 100) -> list[JobInfo]:
        body = await self.request("GET", "/v1/jobs", params={"pipeline": pipeline, "limit": limit})
        return [JobInfo.from_json(j) for j in body["jobs"]]

    async def inspect_job(self, pipeline: str, job: str) -> JobInfo:
        return JobInfo.from_json(
            await self.request("GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}")
        )

    async def wait_job(self, pipeline: str, job: str, *, timeout: float | None = None) -> JobInfo:
        body = await self.request(
            "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/wait", params={"timeout": timeout}
        )
        return JobInfo.from_json(body)

    async def stop_job(self, pipeline: str, job: str) -> JobInfo:
        body = await self.request("POST", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/stop")
        return JobInfo.from_json(body)

    async def delete_job(self, pipeline: str, job: str) -> None:
        await self.request("DELETE", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}")

    async def list_datums(self, pipeline: str, job: str) -> list[DatumInfo]:
        body = await self.request("GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums")
        return [DatumInfo.from_json(d) for d in body["datums"]]

    async def iter_datums(
        self, pipeline: str, job: str, *, all_: bool = False, page: int = 1000
    ) -> AsyncIterator[DatumInfo]:
        """A job's datums by id, page by page (with ``all_``, the skipped ones too)."""
        after = ""
        while True:
            params: dict[str, Any] = {"limit": page, "after": after}
            if all_:
                params["all"] = "true"
            body = await self.request(
                "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums", params=params
            )
            for datum in body["datums"]:
                yield DatumInfo.from_json(datum)
            if not body.get("next"):
                return
            after = body["next"]

    async def inspect_datum(self, pipeline: str, job: str, datum: str) -> DatumInfo:
        body = await self.request(
            "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums/{_q(datum)}"
        )
        return DatumInfo.from_json(body)

    async def restart_datum(self, pipeline: str, job: str, datum: str) -> JobInfo | None:
        body = await self.request(
            "POST", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums/{_q(datum)}/restart"
        )
        return JobInfo.from_json(body["job"]) if body.get("job") else None

    async def logs(
        self,
        pipeline: str,
        *,
        job: str | None = None,
        datum: str | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[LogLine]:
        body = await self.request(
            "GET",
            f"/v1/pipelines/{_q(pipeline)}/logs",
            params={"job": job, "datum": datum, "after": after, "limit": limit},
        )
        return [LogLine.from_json(line) for line in body["logs"]]

    # Secrets

    async def create_secret(self, manifest: dict[str, Any], *, update: bool = False) -> SecretInfo:
        """Store a secret from a Kubernetes Secret manifest; ``update`` replaces one."""
        body = await self.request(
            "POST", "/v1/secrets", json_body={"secret": manifest}, params={"update": update}
        )
        return SecretInfo.from_json(body)

    async def list_secrets(self) -> list[SecretInfo]:
        body = await self.request("GET", "/v1/secrets")
        return [SecretInfo.from_json(s) for s in body["secrets"]]

    async def inspect_secret(self, name: str) -> SecretInfo:
        return SecretInfo.from_json(await self.request("GET", f"/v1/secrets/{_q(name)}"))

    async def delete_secret(self, name: str) -> None:
        await self.request("DELETE", f"/v1/secrets/{_q(name)}")

    async def secret_data(self, name: str) -> dict[str, bytes]:
        """A secret's values by key (for workers: PPS's internal endpoint)."""
        body = await self.request("GET", f"/v1/internal/secrets/{_q(name)}/data")
        return {key: base64.b64decode(value) for key, value in body["data"].items()}
