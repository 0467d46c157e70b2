"""The HTTP client SDK for PPS: pipelines, jobs, datums, logs and secrets (the job, datum
and log reads are ``shared.api.jobs_api``'s)."""

from __future__ import annotations

import base64
from typing import Any

from shared.api.jobs_api import JobsApi
from shared.api.jobs_api import path_part as _q
from shared.api.pps_models import JobInfo, PipelineInfo, SecretInfo


class PpsClient(JobsApi):
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

    async def wait_job(self, pipeline: str, job: str, *, timeout: float | None = None) -> JobInfo:
        body = await self.request(
            "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/wait", params={"timeout": timeout}
        )
        return JobInfo.from_json(body)

    async def stop_job(self, pipeline: str, job: str) -> JobInfo:
        body = await self.request("POST", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/stop")
        return JobInfo.from_json(body)

    async def restart_datum(self, pipeline: str, job: str, datum: str) -> JobInfo | None:
        body = await self.request(
            "POST", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums/{_q(datum)}/restart"
        )
        return JobInfo.from_json(body["job"]) if body.get("job") else None

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

    # For the scheduler

    async def report_workers(self, name: str, problem: str | None) -> PipelineInfo:
        """Tell PPS what is wrong with a pipeline's workers (None: nothing now); an active
        pipeline turns PIPELINE_CRASHING with that reason, or back to PIPELINE_RUNNING."""
        body = await self.request(
            "POST", f"/v1/internal/pipelines/{_q(name)}/workers", json_body={"problem": problem}
        )
        return PipelineInfo.from_json(body)
