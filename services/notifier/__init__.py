"""Notifier service: decisions and acks to Slack, PagerDuty and webhooks."""
