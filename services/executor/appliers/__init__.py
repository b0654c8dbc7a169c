"""Appliers by name: one module each, registered here in one explicit dict.

Modules are imported only when their applier is configured, so the MLflow extra is needed
only by those who use it.
"""

from __future__ import annotations

from collections.abc import Callable

from rollguard_services.executor.appliers.base import Applier
from rollguard_services.executor.settings import ExecutorSettings


def _registry(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.registry import RegistryApplier

    return RegistryApplier()


def _mlflow(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.mlflow import MlflowApplier

    return MlflowApplier(settings.mlflow)


def _webhook(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.webhook import WebhookApplier

    return WebhookApplier(settings.webhook)


def _command(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.command import CommandApplier

    return CommandApplier(settings.command)


def _delta(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.delta import DeltaApplier

    return DeltaApplier(settings.delta)


def _kubernetes(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.kubernetes import KubernetesApplier, check

    check(settings.kubernetes)
    return KubernetesApplier(settings.kubernetes)


def _ready(settings: ExecutorSettings) -> Applier:
    from rollguard_services.executor.appliers.ready import ReadyApplier

    return ReadyApplier(settings.ready)


APPLIERS: dict[str, Callable[[ExecutorSettings], Applier]] = {
    "registry": _registry,
    "mlflow": _mlflow,
    "webhook": _webhook,
    "command": _command,
    "delta": _delta,
    "kubernetes": _kubernetes,
    "ready": _ready,
}


def build_appliers(settings: ExecutorSettings) -> dict[str, Applier]:
    """Every applier the settings name; an unknown name fails with the list of known ones."""
    settings.check(set(APPLIERS))
    return {name: APPLIERS[name](settings) for name in sorted(settings.applier_names())}
