"""What the decider and the executors answered a person's request: `rollback`, `unlock` and
`approve` send an event and wait for the decision it leads to (and, asked to, for the
rollback it launched to be applied or verified), instead of printing "requested" and exiting
0 whatever the decider said.

The answer is found by id: the decider derives a decision's id from the request or approval
it answers (``derived_id``), so the command knows which decision to wait for before it
sends. The topics are read from where they ended before the send, and only events signed by
a key trusted for their type count: a forged "rollback" decision on the topic is not an
answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import TopicPartition

from rollguard import topics
from rollguard.bus import make_consumer, wait_for_broker
from rollguard.errors import ExitCode, UsageError
from rollguard.events import CommandAck, Decision, decode
from rollguard.settings import RollguardSettings
from rollguard.signing import trust_of

Wait = Literal["decided", "applied", "verified"]
WAITS: tuple[Wait, ...] = ("decided", "applied", "verified")

#: Hold reasons that are an answer of yes: the request is taken, not refused.
TAKEN = frozenset({"awaiting_approval", "unlocked", "paused", "resumed", "mode_set"})
#: A later decision that ends the request badly: the rollback did not verify, nobody
#: acknowledged its command, or the approvals it waited for never came.
ENDED_BADLY = frozenset(
    {"verification_failed", "unverifiable", "command_unacknowledged", "approval_expired"}
)
#: The executor's final word on a command; the first one counts (a ``rejected`` replay of a
#: command sent twice comes after the ``applied`` of the first copy).
FINAL = frozenset({"applied", "failed", "rejected"})
#: Acks kept while the decision naming their command has not been read yet.
EARLY_ACKS = 10_000


@dataclass
class Answer:
    """What came back, in the order it came."""

    decision: Decision | None = None
    #: Holds the answer went through before the rollback that settled it (an approver's
    #: "still needs", a request awaiting approval).
    earlier: list[Decision] = field(default_factory=list)
    acks: list[CommandAck] = field(default_factory=list)
    after: list[Decision] = field(default_factory=list)  # verification outcomes
    waited_for: Wait = "decided"
    timed_out: bool = False

    @property
    def refused(self) -> bool:
        d = self.decision
        return d is not None and d.action == "hold" and not {r.code for r in d.reasons} & TAKEN

    @property
    def pending(self) -> bool:
        d = self.decision
        return d is not None and any(r.code == "awaiting_approval" for r in d.reasons)

    @property
    def final(self) -> str | None:
        """The executor's first final ack status (applied, failed, rejected)."""
        return next(
            (a.status for a in self.acks if a.component is None and a.status in FINAL), None
        )

    @property
    def verified(self) -> bool:
        return any(a.status == "verified" and a.component is None for a in self.acks)

    @property
    def failed(self) -> bool:
        return self.final in ("failed", "rejected") or any(
            {r.code for r in d.reasons} & ENDED_BADLY for d in self.after
        )

    def exit_code(self) -> int:
        if self.decision is None or self.timed_out:
            return ExitCode.TIMED_OUT
        if self.refused:
            return ExitCode.REFUSED
        if self.failed:
            return ExitCode.FAILED
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome(),
            "decision": self.decision.model_dump(mode="json") if self.decision else None,
            "earlier": [d.model_dump(mode="json") for d in self.earlier],
            "acks": [a.model_dump(mode="json") for a in self.acks],
            "after": [d.model_dump(mode="json") for d in self.after],
        }

    def outcome(self) -> str:
        if self.decision is None:
            return "timed_out"
        if self.refused:
            return "refused"
        if self.failed:
            return "failed"
        if self.timed_out:
            return "timed_out"
        if self.verified:
            return "verified"
        if self.final == "applied":
            return "applied"
        if self.pending:
            return "awaiting_approval"
        return self.decision.action if self.decision.action != "hold" else "taken"

    def lines(self) -> list[str]:
        """The answer in words, every reason with its detail."""
        d = self.decision
        if d is None:
            return ["no answer from the decider in time (is it running? rollguard status)"]
        out = []
        for shown in (*self.earlier, d):
            level = f" level {shown.level}" if shown.level else ""
            target = f" to {shown.target_system_version}" if shown.target_system_version else ""
            out.append(
                f"decision {shown.event_id}: {shown.action}{level}{target} ({shown.model_id})"
            )
            out += [f"  {r.code}: {r.detail}" for r in shown.reasons]
        if d.command_id and d.action == "rollback":
            out.append(f"  command {d.command_id}")
        if self.pending:  # an approver's "still needs" names the decision it continues
            pending = d.parent_decision_id or d.event_id
            out.append(f"  approve with: rollguard approve {pending} --as ROLE")
        for a in self.acks:
            part = f" {a.component}" if a.component else ""
            detail = f": {a.detail}" if a.detail else ""
            out.append(f"{a.status}{part} ({a.executor_id}){detail}")
        for later in self.after:
            out.append(f"decision {later.event_id}: {later.action}")
            out += [f"  {r.code}: {r.detail}" for r in later.reasons]
        if self.timed_out:
            out.append(f"timed out waiting for {self.waited_for}")
        return out


class Follower:
    """The decisions and acks topics from where they ended when it started."""

    def __init__(self, settings: RollguardSettings) -> None:
        self.settings = settings
        self.trust = trust_of(settings)
        self.consumer = make_consumer(settings, group_id=None, control=True)

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.topics()
        parts = [
            TopicPartition(self.settings.topic(name), p)
            for name in (topics.DECISIONS.name, topics.ACKS.name)
            for p in self.consumer.partitions_for_topic(self.settings.topic(name)) or ()
        ]
        if not parts:
            raise UsageError(
                f"no topic {self.settings.topic(topics.DECISIONS.name)} or "
                f"{self.settings.topic(topics.ACKS.name)} on the broker (or not readable "
                "here): run rollguard topics create, or check the topic prefix and ACLs"
            )
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:  # the positions are taken now, before anything is sent
            await self.consumer.position(tp)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def events(self, timeout_s: float) -> list[Decision | CommandAck]:
        """Trusted decisions and acks that came within ``timeout_s``, decisions first (an ack
        fetched in the same batch as the decision it follows is then not read before it)."""
        batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000))
        out: list[Decision | CommandAck] = []
        decisions, acks = (self.settings.topic(t.name) for t in (topics.DECISIONS, topics.ACKS))
        for tp, records in batches.items():
            cls: type[Decision] | type[CommandAck] = (
                Decision if tp.topic == decisions else CommandAck
            )
            if tp.topic not in (decisions, acks):
                continue
            for record in records:
                try:
                    event = decode(cls, record.value)
                except ValueError:
                    continue  # not ours to judge here: the ledger dead-letters it
                if self.trust.check(event).ok:
                    out.append(event)
        return sorted(out, key=lambda e: isinstance(e, CommandAck))  # stable: order kept


async def ask(
    settings: RollguardSettings,
    send: Callable[[], Awaitable[None]],
    answers: set[str],
    wait: Wait,
    timeout_s: float,
) -> Answer:
    """Send, then wait for a decision whose id is in ``answers`` and, for ``applied`` or
    ``verified``, for what follows a rollback it launched (through approvals too)."""
    await wait_for_broker(settings)
    follower = Follower(settings)
    await follower.start()
    answer = Answer(waited_for=wait)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await send()
        command: str | None = None
        ids = set(answers)
        early: list[CommandAck] = []  # acks read before the decision that names their command
        while True:
            left = deadline - loop.time()
            if left <= 0:
                answer.timed_out = True
                return answer
            for event in await follower.events(min(left, 0.5)):
                if isinstance(event, CommandAck):
                    if command is not None and event.command_id == command:
                        answer.acks.append(event)
                    elif command is None:
                        early = [*early[-EARLY_ACKS:], event]  # bounded: others' acks too
                    continue
                launched = event.action == "rollback" and event.command_id is not None
                related = event.parent_decision_id in ids or (
                    command is not None and event.command_id == command
                )
                if answer.decision is None and event.event_id in ids:
                    answer.decision = event
                elif launched and command is None and (event.event_id in ids or related):
                    # after a hold awaiting approval: the rollback the last approval launched
                    if answer.decision is not None:
                        answer.earlier.append(answer.decision)
                    answer.decision = event
                elif related:
                    answer.after.append(event)
                if answer.decision is not None:
                    ids.add(answer.decision.event_id)
                    if answer.decision.parent_decision_id:
                        ids.add(answer.decision.parent_decision_id)
                    if answer.decision.action == "rollback" and command is None:
                        command = answer.decision.command_id
                        answer.acks += [a for a in early if a.command_id == command]
            if _done(answer, wait):
                return answer
    finally:
        await follower.stop()


def _done(answer: Answer, wait: Wait) -> bool:
    if answer.decision is None:
        return False
    if answer.refused or answer.failed:
        return True
    if wait == "decided":
        return True
    if wait == "applied":
        return answer.final == "applied" or answer.verified
    return answer.verified
