"""Every ``ROLLGUARD_*`` variable must be a setting: a typo (``ROLLGUARD_KAFKA_BOOSTRAP``) would
otherwise be ignored in silence and start a private embedded broker instead of using yours."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from rollguard.errors import UsageError
from rollguard.settings import RollguardSettings
from rollguard_services.api.settings import ApiSettings
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.executor.appliers.command import STEP_VARIABLES
from rollguard_services.executor.settings import ExecutorSettings
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.notifier.settings import NotifierSettings
from rollguard_services.router.settings import RouterSettings

SETTINGS: tuple[type[BaseSettings], ...] = (
    RollguardSettings,
    DeciderSettings,
    DetectorSettings,
    ExecutorSettings,
    LedgerSettings,
    NotifierSettings,
    RouterSettings,
    ApiSettings,
)
#: Not settings, yet rollguard's: the test suite's own (tests/conftest.py), and what the
#: command applier hands the scripts it runs (a script may call rollguard itself).
NOT_SETTINGS_PREFIXES = ("ROLLGUARD_TEST_",)


def known_variables() -> tuple[set[str], set[str]]:
    """(names, prefixes): every setting's variable, and the prefixes of nested ones
    (``ROLLGUARD_EXECUTOR_WEBHOOK__`` takes ``...__SECRET`` and the like)."""
    names: set[str] = set(STEP_VARIABLES)
    prefixes: set[str] = set(NOT_SETTINGS_PREFIXES)
    for cls in SETTINGS:
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        nested = cls.model_config.get("env_nested_delimiter")
        for field, info in cls.model_fields.items():
            name = f"{prefix}{field.upper()}"
            names.add(name)
            kind = info.annotation
            if nested and isinstance(kind, type) and issubclass(kind, BaseModel):
                prefixes.add(f"{name}{nested}")
    return names, prefixes


def check_environment(environ: Mapping[str, str]) -> None:
    """UsageError naming every unknown ROLLGUARD_* variable and the nearest known one."""
    names, prefixes = known_variables()
    unknown = sorted(
        key
        for key in (k.upper() for k in environ)
        if key.startswith("ROLLGUARD_") and key not in names and not key.startswith(tuple(prefixes))
    )
    if not unknown:
        return
    said = []
    for key in unknown:
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.85)
        said.append(f"{key} (did you mean {near[0]}?)" if near else key)
    raise UsageError(
        f"unknown setting{'s' if len(said) > 1 else ''} {', '.join(said)}; "
        "every ROLLGUARD_* variable must be one (README, 'Running for real')"
    )
