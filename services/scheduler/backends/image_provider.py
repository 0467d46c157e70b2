"""Images for the local backend: each pipeline version's image pulled once, before its
workers start, by a task this provider owns.

The scheduler pulls (not each worker): one pull per pipeline version however many
workers it has, and a failure lands where the scheduler already reports worker problems
(``status()``'s ``problems``), so the pipeline turns ``PIPELINE_CRASHING`` and its jobs
``JOB_FAILURE`` within seconds of the registry's answer. A failed pull is tried again
after a backoff (the registry may come back); a new pipeline version starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from shared.api.pps_client import PpsClient
from shared.images.credentials import SECRET_KEYS, Credentials, parse_docker_config
from shared.images.pull import obtain_image
from shared.images.store import ImageStore
from shared.platform.config import Config, tusk_home
from shared.platform.errors import FailedPrecondition, InvalidArgument, TuskError

log = logging.getLogger("tusk.images")

PULL_RETRY_FIRST = 10.0
PULL_RETRY_MAX = 300.0
HOST = "host"
PULL = "pull"
# What the local backend tells a worker: the manifest digest to run in, and the cache.
WORKER_IMAGE_ENV = "TUSK_WORKER_IMAGE"
IMAGE_CACHE_ENV = "TUSK_WORKER_IMAGE_CACHE"


@dataclass(frozen=True, slots=True)
class ImageSettings:
    """``mode``: ``pull`` (run datums in the image) or ``host`` (the host's /usr, as
    before images were honoured); the cache's directory and size bound; the Docker
    config.json with registry logins (``None``: none); PPS, for ``image_pull_secrets``."""

    mode: str
    cache_dir: Path
    cache_bytes: int | None = None
    auth_file: Path | None = None
    # Where ``image_pull_secrets`` are read (PPS, as workers read secrets).
    pps_url: str | None = None
    cluster_id: str = ""


@dataclass
class _Pull:
    image: str
    secrets: tuple[str, ...] = ()
    task: asyncio.Task[str] | None = None
    digest: str | None = None
    error: str | None = None
    retry_at: float = 0.0
    failures: int = 0
    noted: bool = False


@dataclass
class ImageProvider:
    settings: ImageSettings
    _pulls: dict[tuple[str, int], _Pull] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _store: ImageStore | None = None
    _pps: PpsClient | None = None

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            self._store = ImageStore(self.settings.cache_dir, self.settings.cache_bytes)
        return self._store

    def image_for(
        self, pipeline: str, version: int, image: str | None, secrets: tuple[str, ...] = ()
    ) -> str | Literal[False] | None:
        """The manifest digest to run ``pipeline`` version ``version`` with; ``None`` when
        it runs on the host (no image, or ``local_images = "host"``); ``False`` while the
        image is being pulled or after it failed (``problem`` says why)."""
        if image is None or self.settings.mode == HOST:
            return None
        key = (pipeline, version)
        pull = self._pulls.get(key)
        if pull is None or pull.image != image:
            pull = self._pulls[key] = _Pull(image, secrets)
        if pull.digest is not None:
            return pull.digest
        if pull.task is None and time.monotonic() >= pull.retry_at:
            pull.task = asyncio.get_running_loop().create_task(
                self._pull(image, pull.secrets), name=f"pull {image} for {pipeline}"
            )
        if pull.task is not None and pull.task.done():
            self._settle(pull)
            if pull.digest is not None:
                return pull.digest
        return False

    def problem(self, pipeline: str, version: int) -> str | None:
        """One line naming the image and the registry's reason, if its pull failed."""
        pull = self._pulls.get((pipeline, version))
        return pull.error if pull is not None and pull.digest is None else None

    def host_note(self, pipeline: str, version: int, image: str | None) -> str | None:
        """The line saying, once per pipeline version, that ``image`` is not used."""
        if image is None or self.settings.mode != HOST:
            return None
        key = (pipeline, version)
        pull = self._pulls.setdefault(key, _Pull(image))
        if pull.noted:
            return None
        pull.noted = True
        return (
            f'local_images = "host": pipeline {pipeline} runs on this machine\'s /usr, '
            f"not in its image {image}"
        )

    def forget(self, keep: Iterable[tuple[str, int]]) -> None:
        """Drop the pulls of pipeline versions no longer wanted (their tasks cancelled)."""
        wanted = set(keep)
        for key in [k for k in self._pulls if k not in wanted]:
            pull = self._pulls.pop(key)
            if pull.task is not None and not pull.task.done():
                pull.task.cancel()

    def in_use(self) -> set[str]:
        return {p.digest for p in self._pulls.values() if p.digest is not None}

    async def close(self) -> None:
        tasks = [p.task for p in self._pulls.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._pulls.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pps is not None:
            await self._pps.close()
            self._pps = None

    def _settle(self, pull: _Pull) -> None:
        assert pull.task is not None
        task, pull.task = pull.task, None
        if task.cancelled():
            return
        failure = task.exception()
        if failure is None:
            pull.digest, pull.error, pull.failures = task.result(), None, 0
            return
        reason = failure.message if isinstance(failure, TuskError) else repr(failure)
        if not isinstance(failure, TuskError):
            log.error("pulling %s failed unexpectedly", pull.image, exc_info=failure)
        pull.error = f"image {pull.image}: {reason}"
        pull.failures += 1
        backoff = min(PULL_RETRY_MAX, PULL_RETRY_FIRST * 2 ** (pull.failures - 1))
        pull.retry_at = time.monotonic() + backoff
        log.warning("%s (trying again in %.0f s)", pull.error, backoff)

    async def _pull(self, image: str, secrets: tuple[str, ...]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        started = time.monotonic()
        credentials = {**self._credentials(), **await self._secret_credentials(secrets)}
        pulled = await obtain_image(self.store, image, self._session, credentials)
        log.info("image %s is %s (%.1f s)", image, pulled.record.digest, time.monotonic() - started)
        removed = await asyncio.to_thread(self.store.evict, {*self.in_use(), pulled.record.digest})
        if removed:
            log.info("image cache: evicted %s", ", ".join(removed))
        return pulled.record.digest

    async def _secret_credentials(self, names: tuple[str, ...]) -> dict[str, Credentials]:
        """Logins from the Tusk secrets ``image_pull_secrets`` names (later ones win)."""
        found: dict[str, Credentials] = {}
        if not names:
            return found
        if self.settings.pps_url is None:
            raise FailedPrecondition("image_pull_secrets need PPS, and none is configured")
        if self._pps is None:
            self._pps = PpsClient(self.settings.pps_url, cluster_id=self.settings.cluster_id)
        for name in names:
            data = await self._pps.secret_data(name)
            keys = [key for key in SECRET_KEYS if key in data]
            if not keys:
                raise InvalidArgument(
                    f"secret {name!r} has no {' or '.join(SECRET_KEYS)} key with registry logins"
                )
            found.update(parse_docker_config(data[keys[0]], f"secret {name!r}"))
        return found

    def _credentials(self) -> dict[str, Credentials]:
        path = self.settings.auth_file
        if path is None or not path.is_file():
            return {}
        return parse_docker_config(path.read_bytes(), str(path))


def image_settings(config: Config) -> ImageSettings:
    """The image settings of ``config`` (refused with the reason if ``local_images`` is
    neither ``pull`` nor ``host``)."""
    if config.local_images not in (PULL, HOST):
        raise InvalidArgument(
            f"config local_images {config.local_images!r}: use 'pull' (run datums in the "
            "pipeline's image) or 'host' (this machine's /usr)"
        )
    cache = Path(config.image_cache_dir) if config.image_cache_dir else tusk_home() / "images"
    auth = Path(config.registry_auth_file) if config.registry_auth_file else default_auth_file()
    return ImageSettings(
        config.local_images,
        cache,
        config.image_cache_bytes or None,
        auth,
        pps_url=config.pps_url,
        cluster_id=config.cluster_id,
    )


def default_auth_file() -> Path:
    """Where ``docker login`` keeps logins: ``$DOCKER_CONFIG/config.json`` or
    ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(directory) / "config.json"
