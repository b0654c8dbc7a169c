"""Notifier channels: the Protocol in base.py, one module per channel, registered in REGISTRY."""

from __future__ import annotations

from collections.abc import Callable

from rollguard_services.notifier.channels.base import Channel
from rollguard_services.notifier.channels.pagerduty import PagerDutyChannel
from rollguard_services.notifier.channels.slack import SlackChannel
from rollguard_services.notifier.channels.webhook import WebhookChannel
from rollguard_services.notifier.settings import NotifierSettings


def _links(s: NotifierSettings) -> str:
    assert s.incident_base_url is not None, "the Notifier resolves it from ROLLGUARD_API_PUBLIC_URL"
    return s.incident_base_url


def _pagerduty(s: NotifierSettings) -> Channel | None:
    if s.pagerduty_routing_key is None:
        return None
    return PagerDutyChannel(s.pagerduty_routing_key.get_secret_value(), s.pagerduty_url, _links(s))


def _slack(s: NotifierSettings) -> Channel | None:
    if s.slack_webhook_url is None:
        return None
    return SlackChannel(s.slack_webhook_url.get_secret_value(), _links(s), s.slack_min_interval_s)


def _webhook(s: NotifierSettings) -> Channel | None:
    if s.webhook_url is None:
        return None
    return WebhookChannel(s.webhook_url, _links(s))


#: Every channel by the name routes use; a factory returns None when it is not configured.
REGISTRY: dict[str, Callable[[NotifierSettings], Channel | None]] = {
    "pagerduty": _pagerduty,
    "slack": _slack,
    "webhook": _webhook,
}


def configured_channels(settings: NotifierSettings) -> dict[str, Channel]:
    built = {name: factory(settings) for name, factory in REGISTRY.items()}
    return {name: ch for name, ch in built.items() if ch is not None}
