"""The HTTP client for the scheduler, the owner of jobs, datums and their logs.

PPS uses it: it tells the scheduler about each pipeline change (with the job the change
asks for) and answers users' job, datum and log requests by asking here. The reads at
the paths PPS also serves are ``shared.api.jobs_api``'s.
"""

from __future__ import annotations

from typing import Any

from shared.api.jobs_api import JobsApi
from shared.api.jobs_api import path_part as _q
from shared.api.pps_models import JobInfo, JobRequest, PipelineInfo


def _job_or_none(body: dict[str, Any]) -> JobInfo | None:
    return JobInfo.from_json(body["job"]) if body.get("job") else None


class SchedulerClient(JobsApi):
    async def pipeline_changed(
        self, info: PipelineInfo, job: JobRequest | None = None
    ) -> JobInfo | None:
        """Give the scheduler PPS's record of a pipeline as it is now, and ask for ``job``;
        the job made (or made before for the same trigger), or None if none is due."""
        body = await self.request(
            "PUT",
            f"/v1/pipelines/{_q(info.name)}",
            json_body={"pipeline": info.to_json(), "job": job.to_json() if job else None},
        )
        return _job_or_none(body)

    async def forget_pipeline(self, name: str) -> None:
        """A deleted pipeline's jobs, datums, logs and outputs records go."""
        await self.request("DELETE", f"/v1/pipelines/{_q(name)}")

    async def restart_datum(self, info: PipelineInfo, job: str, datum: str) -> JobInfo | None:
        """A new job over the latest inputs that runs ``datum`` again (None: no input data)."""
        body = await self.request(
            "POST",
            f"/v1/pipelines/{_q(info.name)}/jobs/{_q(job)}/datums/{_q(datum)}/restart",
            json_body={"pipeline": info.to_json()},
        )
        return _job_or_none(body)

    async def request_stop(self, pipeline: str, job: str, reason: str) -> bool:
        """Ask for an unfinished job to end JOB_KILLED; False if it had already ended."""
        body = await self.request(
            "POST",
            f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/stop",
            json_body={"reason": reason},
        )
        return bool(body["asked"])

    async def last_job_states(self, pipeline: str | None = None) -> dict[str, str]:
        """Each pipeline's newest job's state."""
        body = await self.request("GET", "/v1/last-job-states", params={"pipeline": pipeline})
        return dict(body["states"])
