"""One HTTP JSON request delivered with the rules every channel shares.

Retry 429 and 5xx (and timeouts and refused connections) with exponential backoff, waiting at
least what Retry-After asks; never retry another 4xx (a 400 will not get better); never send
to one URL more often than the channel's minimum interval. The outcome is data.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from rollguard.retry_after import retry_after_s
from rollguard_services.notifier.settings import NotifierSettings


@dataclass(frozen=True)
class Delivery:
    """``status``: sent, or failed (permanent answer, or attempts used up)."""

    status: str
    attempts: int
    http_status: int | None = None
    error: str = ""


class Pacer:
    """Spaces requests to one URL at least ``min_interval_s`` apart."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._next - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next = loop.time() + self.min_interval_s


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    settings: NotifierSettings,
    pacer: Pacer,
) -> Delivery:
    backoff = settings.backoff_initial_s
    last_status: int | None = None
    last_error = ""
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    for attempt in range(1, settings.max_attempts + 1):
        await pacer.wait()
        wait = backoff
        try:
            async with session.post(url, json=body, timeout=timeout) as resp:
                last_status = resp.status
                text = (await resp.text())[:500]
                if 200 <= resp.status < 300:
                    return Delivery("sent", attempt, resp.status)
                last_error = f"HTTP {resp.status}: {text}"
                if resp.status != 429 and resp.status < 500:
                    return Delivery("failed", attempt, resp.status, last_error)
                asked = retry_after_s(resp.headers.get("Retry-After"))
                if asked is not None:
                    wait = max(wait, min(asked, settings.retry_after_max_s))
        except (aiohttp.ClientError, TimeoutError) as exc:
            last_status, last_error = None, f"{type(exc).__name__}: {exc}"[:500]
        if attempt < settings.max_attempts:
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, settings.backoff_max_s)
    return Delivery(
        "failed",
        settings.max_attempts,
        last_status,
        f"gave up after {settings.max_attempts} attempts; last: {last_error}",
    )
