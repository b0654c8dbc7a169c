"""PagerDuty Events API v2: trigger, acknowledge and resolve one alert per incident.

Every event of an incident carries the same ``dedup_key`` (``rollguard/<model>/<ref>``), so
PagerDuty folds them into one alert: trigger when a rollback (or an escalation) is decided or
a rollback/verification fails, acknowledge when the rollback is applied, resolve when verified.
"""

from __future__ import annotations

from typing import Any

from rollguard_services.notifier.channels.base import incident_url
from rollguard_services.notifier.notifications import PAGE_ALWAYS, Notification

_SEVERITY = {"immediate": "critical", "rapid": "error", "delayed": "warning"}


class PagerDutyChannel:
    name = "pagerduty"
    min_interval_s = 0.0

    def __init__(self, routing_key: str, url: str, incident_base_url: str) -> None:
        self.routing_key = routing_key
        self.url = url
        self.incident_base_url = incident_base_url

    def render(self, n: Notification) -> dict[str, Any] | None:
        if n.kind == "rollback_applied":
            return self._follow_up("acknowledge", n)
        if n.kind == "rollback_verified":
            return self._follow_up("resolve", n)
        if n.kind in ("hold", "would_roll_back"):  # nothing for a person to act on
            return None
        failed = n.kind in PAGE_ALWAYS
        link = incident_url(self.incident_base_url, n.incident_ref)
        details: dict[str, Any] = {
            "event": n.kind,
            "model_id": n.model_id,
            "model_version": n.model_version,
            "system_version": n.system_version,
            "tier": n.tier,
            "incident": n.incident_ref,
        }
        if n.action:
            details.update(
                decision=n.action, level=n.level, target_system_version=n.target_system_version
            )
        if n.reasons:
            details["reasons"] = n.reasons
        if n.breaches:
            details["breaches"] = [b.line() for b in n.breaches]
        if n.detail:
            details["detail"] = n.detail
        if n.metrics:
            details["metrics"] = n.metrics
        return {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": n.dedup_key,
            "payload": {
                "summary": n.summary,
                "source": f"rollguard/{n.model_id}",
                "severity": "critical" if failed else _SEVERITY.get(n.tier or "", "error"),
                "timestamp": n.ts.isoformat(),
                "component": n.model_id,
                "group": n.model_version,
                "class": n.kind,
                "custom_details": details,
            },
            "links": [{"href": link, "text": "rollguard incident"}],
            "client": "rollguard",
            "client_url": link,
        }

    def _follow_up(self, action: str, n: Notification) -> dict[str, Any]:
        return {"routing_key": self.routing_key, "event_action": action, "dedup_key": n.dedup_key}
