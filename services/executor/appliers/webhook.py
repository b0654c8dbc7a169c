"""The webhook applier: POSTs each step to a URL (Argo Rollouts via Argo Events, KServe, a
feature-flag service, your own bridge).

Every request carries ``Idempotency-Key`` (the command id; per component for level 2) so the
target can make a retry or a redelivery a no-op, and, when a secret is set, an HMAC-SHA256
signature over the exact body bytes. One attempt per call: a 5xx, 408, 429, a timeout or a
broken connection is a retriable failure (with the target's Retry-After), any other non-2xx
is final. The executor does the retrying, bounded by the command's expiry.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

import aiohttp
import orjson

from rollguard.errors import ConfigError
from rollguard.retry_after import retry_after_s
from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import WebhookSettings

#: What the target said, at most this much of it, goes into the ack's detail.
_BODY_SHOWN = 300


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookApplier:
    name = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        if not settings.url.startswith(("http://", "https://")):
            raise ConfigError(
                "the webhook applier needs ROLLGUARD_EXECUTOR_WEBHOOK__URL (http or https)"
            )
        try:
            settings.url.format(model_id="m", component="c")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"ROLLGUARD_EXECUTOR_WEBHOOK__URL: only {{model_id}} and {{component}} may be "
                f"filled in ({exc!r})"
            ) from None
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def apply(self, step: Step) -> Effect:
        s = self.settings
        body = orjson.dumps(step.document(), option=orjson.OPT_SORT_KEYS)
        headers = {
            **s.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": step.idempotency_key,
        }
        if s.secret is not None:
            headers[s.signature_header] = signature(s.secret.get_secret_value().encode(), body)
        url = s.url.format(
            model_id=quote(step.command.model_id, safe=""), component=quote(step.component)
        )
        try:
            async with self._client().post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=s.timeout_s),
            ) as resp:
                status = resp.status
                said = (await resp.content.read(_BODY_SHOWN)).decode(errors="replace").strip()
                after = retry_after_s(resp.headers.get("Retry-After"))
        except TimeoutError:
            return Effect("failed", f"no answer from the webhook within {s.timeout_s:g}s", True)
        except aiohttp.ClientError as exc:
            # Refused, reset, or an answer that is not HTTP: the target may be restarting.
            return Effect("failed", f"webhook unreachable or garbled: {exc!r}"[:500], True)
        if 200 <= status < 300:
            return Effect("applied", f"webhook HTTP {status}" + (f": {said}" if said else ""))
        if status in (408, 429) or status >= 500:
            if after is not None:
                after = min(after, s.max_retry_after_s)
            return Effect("failed", f"webhook HTTP {status}: {said}", True, retry_after_s=after)
        return Effect("failed", f"webhook HTTP {status} (not retried): {said}", retriable=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
