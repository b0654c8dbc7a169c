"""What every decision function is given besides the model's state and its input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rollguard.policy import ModelPolicy
from rollguard.signing import Signer


@dataclass(frozen=True, kw_only=True)
class DecisionContext:
    """The policy in force for the model, the decider's clock and its signing key.

    One object instead of positional arguments, so a field can be added (a mode, a feature
    flag) without touching every function and every caller.
    """

    policy: ModelPolicy
    now: datetime
    signer: Signer
    #: How long past a verification window's end its last traffic reports may still arrive
    #: (the detector reports every few seconds, once the window's windows have closed).
    traffic_grace: timedelta = timedelta(seconds=10)
