"""What every decision function is given besides the model's state and its input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rollguard.policy import ModelPolicy
from rollguard.signing import Signer

#: How many fresh windows (and graces) resumes may add to a verification short of traffic.
RESUMES_AT_MOST = 3

#: A time before any other: a decider that has not resumed yet, a context made for a test.
NEVER = datetime.min.replace(tzinfo=UTC)


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
    #: When this decider last took its partitions (a start, a restart, a hand-over): the
    #: detector's reports of what happened while nobody decided arrive only after that.
    resumed_at: datetime = NEVER

    def traffic_due(self, deadline: datetime) -> datetime:
        """When a verification window that ended at ``deadline`` short of traffic is called
        unverifiable: the grace past its end, or past a fresh window from when this decider
        resumed if it was away then (its reports, and the restored version's traffic once
        rollguard is back, had no time to arrive) — but never more than
        ``RESUMES_AT_MOST`` windows and graces late, so rebalances that keep coming (a member
        crash-looping) cannot put the verdict off for ever."""
        window = timedelta(seconds=self.policy.rollback.verification_s)
        latest = deadline + RESUMES_AT_MOST * (window + self.traffic_grace)
        return min(max(deadline, self.resumed_at + window), latest) + self.traffic_grace
