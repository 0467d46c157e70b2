"""The job, datum and log reads both PPS and the scheduler serve, at the same paths.

The scheduler owns jobs and answers them; PPS serves the same endpoints to users by
asking the scheduler (Pachyderm users keep one endpoint). ``PpsClient`` and
``SchedulerClient`` both inherit these calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from shared.api.pfs_client import ServiceClient
from shared.api.pps_models import DatumInfo, JobInfo, LogLine


def path_part(part: str) -> str:
    """One segment of a URL path, quoted whole (a ``/`` in it stays inside the segment)."""
    return quote(part, safe="")


_q = path_part


class JobsApi(ServiceClient):
    async def list_jobs(self, pipeline: str | None = None, *, limit: int = 100) -> list[JobInfo]:
        body = await self.request("GET", "/v1/jobs", params={"pipeline": pipeline, "limit": limit})
        return [JobInfo.from_json(j) for j in body["jobs"]]

    async def inspect_job(self, pipeline: str, job: str) -> JobInfo:
        return JobInfo.from_json(
            await self.request("GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}")
        )

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

    async def datums_page(
        self,
        pipeline: str,
        job: str,
        *,
        all_: bool = False,
        after: str = "",
        limit: int = 1000,
        only_state: str | None = None,
    ) -> tuple[list[DatumInfo], str | None]:
        """One page of a job's datums by id (``only_state``: in that state only), and the
        cursor of the next (None at the end)."""
        params: dict[str, Any] = {"limit": limit, "after": after, "state": only_state}
        if all_:
            params["all"] = "true"
        body = await self.request(
            "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums", params=params
        )
        return [DatumInfo.from_json(d) for d in body["datums"]], body.get("next")

    async def inspect_datum(self, pipeline: str, job: str, datum: str) -> DatumInfo:
        body = await self.request(
            "GET", f"/v1/pipelines/{_q(pipeline)}/jobs/{_q(job)}/datums/{_q(datum)}"
        )
        return DatumInfo.from_json(body)

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
