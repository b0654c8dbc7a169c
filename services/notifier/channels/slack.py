"""Slack incoming webhook with Block Kit: what breached, the numbers, the decision and reason,
the rollback level, and a link to the incident."""

from __future__ import annotations

from typing import Any

from rollguard_services.notifier.channels.base import incident_url
from rollguard_services.notifier.notifications import Notification

_TITLE = {
    "rollback_decided": ":rotating_light: Rollback decided",
    "investigate": ":mag: Investigation needed",
    "hold": ":pause_button: Rollback held",
    "rollback_applied": ":arrow_backward: Rollback applied",
    "rollback_verified": ":white_check_mark: Rollback verified",
    "rollback_failed": ":x: Rollback failed",
    "verification_failed": ":warning: Rollback did not verify",
    "unverifiable": ":warning: Rollback could not be verified",
    "would_roll_back": ":eyes: Would roll back (observe mode)",
    "recommended": ":raising_hand: Rollback recommended: confirm it",
}


def _text(s: str) -> str:
    # Block Kit section text is limited to 3000 characters.
    return s if len(s) <= 3000 else s[:2997] + "..."


class SlackChannel:
    name = "slack"

    def __init__(self, webhook_url: str, incident_base_url: str, min_interval_s: float) -> None:
        self.url = webhook_url
        self.incident_base_url = incident_base_url
        self.min_interval_s = min_interval_s

    def render(self, n: Notification) -> dict[str, Any]:
        link = incident_url(self.incident_base_url, n.incident_ref)
        title = f"{_TITLE[n.kind]}: {n.model_id} {n.model_version}"
        fields = [
            f"*Model*\n`{n.model_id}` {n.model_version}"
            + (f" ({n.system_version})" if n.system_version else ""),
            f"*Tier*\n{n.tier or 'unknown'}",
        ]
        if n.action:
            level = f", level {n.level}" if n.level else ""
            fields.append(f"*Decision*\n{n.action}{level}")
        if n.target_system_version:
            fields.append(f"*Restore*\n{n.target_system_version}")
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _text(n.summary)}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        ]
        if n.breaches:
            lines = "\n".join(f"• {b.line()}" for b in n.breaches)
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _text(f"*What breached*\n{lines}")},
                }
            )
        if n.reasons:
            lines = "\n".join(f"• {r}" for r in n.reasons)
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": _text(f"*Why*\n{lines}")}}
            )
        if n.metrics:
            figures = ", ".join(f"{k} {v:.3g}" for k, v in sorted(n.metrics.items()))
            blocks.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": _text(figures)}]}
            )
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open incident"},
                        "url": link,
                    }
                ],
            }
        )
        return {"text": f"{title}: {n.summary}"[:3000], "blocks": blocks}
