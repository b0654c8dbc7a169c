"""The ready applier: a level-3 step that waits until the restored feature pipeline's features
are recomputed — until ``url`` answers 200 with ``{"ready": true}``.

One attempt per call, as every applier: not ready yet (any other answer, a 404, a timeout) is
a retriable failure asking to be tried again in ``interval_s``, so the executor's own retrying
does the waiting, bounded by the command's expiry and by ``timeout_s`` from the first attempt
of the step (then the step fails and the level-3 rollback is compensated as any failed step).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import aiohttp

from rollguard.errors import ConfigError
from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import ReadySettings


class ReadyApplier:
    name = "ready"

    def __init__(self, settings: ReadySettings) -> None:
        if not settings.url.startswith(("http://", "https://")):
            raise ConfigError(
                "the ready applier needs ROLLGUARD_EXECUTOR_READY__URL (http or https)"
            )
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        #: idempotency key → when its first attempt was made (monotonic)
        self._first: dict[str, float] = {}

    async def apply(self, step: Step) -> Effect:
        s = self.settings
        first = self._first.setdefault(step.idempotency_key, time.monotonic())
        url = s.url.format(model_id=quote(step.command.model_id), version=quote(step.to_version))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                url, headers=s.headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as answer:
                ready = (
                    answer.status == 200
                    and (await answer.json(content_type=None)).get("ready") is True
                )
                said = f"{answer.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            ready, said = False, type(exc).__name__
        waited = time.monotonic() - first
        if ready:
            self._first.pop(step.idempotency_key, None)
            return Effect("applied", f"features of {step.to_version} ready after {waited:.0f} s")
        if waited >= s.timeout_s:
            self._first.pop(step.idempotency_key, None)
            return Effect(
                "failed", f"features of {step.to_version} not ready within {s.timeout_s:g} s"
            )
        return Effect(
            "failed",
            f"features of {step.to_version} not ready yet ({said})",
            retriable=True,
            retry_after_s=s.interval_s,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
