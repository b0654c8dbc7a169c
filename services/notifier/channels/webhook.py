"""A generic webhook in the shape of Alertmanager's webhook receiver (version 4), so tools that
already take Alertmanager alerts take rollguard's."""

from __future__ import annotations

import hashlib
from typing import Any

from rollguard_services.notifier.channels.base import incident_url
from rollguard_services.notifier.notifications import Notification

#: Alertmanager's "not ended yet".
_OPEN_END = "0001-01-01T00:00:00Z"


class WebhookChannel:
    name = "webhook"
    min_interval_s = 0.0

    def __init__(self, url: str, incident_base_url: str, receiver: str = "rollguard") -> None:
        self.url = url
        self.incident_base_url = incident_base_url
        self.receiver = receiver

    def render(self, n: Notification) -> dict[str, Any]:
        link = incident_url(self.incident_base_url, n.incident_ref)
        resolved = n.kind == "rollback_verified"
        labels = {
            "alertname": "RollguardIncident",
            "model_id": n.model_id,
            "model_version": n.model_version,
            "tier": n.tier or "unknown",
            "incident": n.incident_ref,
        }
        annotations = {
            "summary": n.summary,
            "event": n.kind,
            "description": "\n".join(
                [*n.reasons, *(b.line() for b in n.breaches), n.detail]
            ).strip(),
            "incident_url": link,
        }
        alert = {
            "status": "resolved" if resolved else "firing",
            "labels": labels,
            "annotations": annotations,
            "startsAt": n.ts.isoformat(),
            "endsAt": n.ts.isoformat() if resolved else _OPEN_END,
            "generatorURL": link,
            "fingerprint": hashlib.sha256(n.dedup_key.encode()).hexdigest()[:16],
        }
        return {
            "version": "4",
            "groupKey": n.dedup_key,
            "truncatedAlerts": 0,
            "status": alert["status"],
            "receiver": self.receiver,
            "groupLabels": {"incident": n.incident_ref},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self.incident_base_url,
            "alerts": [alert],
        }
