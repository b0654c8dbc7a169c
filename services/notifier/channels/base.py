"""The contract of a notifier channel: turn a notification into one HTTP JSON request.

A channel only renders; delivery (retries, backoff, Retry-After, rate limit, dedup) is the
same for every channel and lives in ``services/notifier/delivery.py``.
"""

from __future__ import annotations

from typing import Any, Protocol

from rollguard_services.notifier.notifications import Notification


class Channel(Protocol):
    name: str
    #: Where requests go. May hold a secret (Slack webhook): never log it.
    url: str
    #: Minimum seconds between two requests to ``url`` (Slack: about one per second).
    min_interval_s: float

    def render(self, n: Notification) -> dict[str, Any] | None:
        """The JSON body for ``n``, or None when this channel has nothing to say about it."""
        ...


def incident_url(base: str, ref: str) -> str:
    return f"{base}{ref}" if base.endswith(("/", "=")) else f"{base}/{ref}"
