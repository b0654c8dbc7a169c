"""Broker outages: said in two log lines, waited out by every service.

Said: while the broker is away, aiokafka logs every attempt of every client at ERROR (~430 lines
a second from `rollguard up`). ``OUTAGES``, a filter on the handlers ``configure_logging``
installs, turns them into one structured ``broker_unreachable`` warning and holds the rest
back (counted), faust's and mode's complaints about the same outage with them. ``watch`` also
asks the broker a Kafka ApiVersions request every half second: a frozen broker fails no client
request until the clients' 40 s request timeout, so an outage is dated from the first request
the broker left unanswered, and said two requests later; a client's error while the broker
answers (a connection it closed) is one ``broker_client_errors`` line, not an outage. It says
``broker_back`` once the broker answers again and the clients have stopped failing, with how
long the broker was away (first unanswered request to first answered one) and how many lines
were held back; it waits two seconds past the first answer, so the clients' complaints about
the outage (raised as their requests come back) are held back too.

Waited out: a ``Sender`` is a producer whose sends wait for the broker to come back, resending a
record whose send timed out (consumers de-duplicate by event id: the first copy may have
arrived); ``OutageLimit`` bounds that wait (ROLLGUARD_BROKER_OUTAGE_LIMIT_S; unset: for as
long as it takes), after which the service gives up with BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownError
from aiokafka.partitioner import DefaultPartitioner

from rollguard.errors import BrokerUnavailable
from rollguard.settings import RollguardSettings

T = TypeVar("T")

# structlog directly: rollguard.logs installs this module's filter.
log = structlog.get_logger(logger_name="rollguard.broker")

#: What aiokafka says when it cannot reach a broker (and what it then says as a consequence).
_SIGNS = (
    "Unable connect",
    "Unable to connect",
    "Connect call failed",
    "Unable to update metadata",
    "Unable to request metadata",
    "NodeNotReadyError",
    "KafkaConnectionError",
    "RequestTimedOutError",
    "Connection at",
    "Coordinator dead",
)

#: The libraries whose warnings during an outage are about the outage.
_CLIENTS = ("aiokafka", "kafka", "faust", "mode")


class BrokerOutages(logging.Filter):
    """Whether the broker is away, since when, and the clients' lines held back meanwhile;
    see the module doc. Times are ``time.monotonic()``.

    While ``watch`` asks a broker that speaks plain Kafka (``probing``), a client's connection
    error is only a suspicion, its lines held back until the next answer decides: unanswered,
    the outage is dated from whichever came first; answered, with the clients quiet again, it
    was one client's connection (a broker back from a long freeze closes some), said once as
    ``broker_client_errors``; answered while clients keep failing for ``suspect_s``, it is an
    outage all the same. Without a probe that can tell, the first error is the outage."""

    def __init__(self, quiet_s: float = 2.0, suspect_s: float = 10.0, confirm: int = 2) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.suspect_s = suspect_s
        #: Unanswered probes in a row that make an outage by themselves.
        self.confirm = confirm
        self.probing = False
        self.down_since: float | None = None
        #: When the broker first answered again during this outage.
        self.answered_at: float | None = None
        self.last_error = 0.0
        self.held = 0
        #: Lines about the last outage that came after it was said to be over.
        self.held_after_back = 0
        self._suspect_since: float | None = None
        self._suspect_error = ""
        self._unanswered = 0
        self._unanswered_since: float | None = None
        #: The last outage: when it ended, and how long it lasted.
        self.back_at: float | None = None
        self.last_outage_s = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_CLIENTS):
            return True
        if self._overran_the_outage(record):
            self.held_after_back += 1
            return False
        message = record.getMessage()
        calm = self.down_since is None and self._suspect_since is None
        if calm and not any(sign in message for sign in _SIGNS):
            return True
        self.last_error = time.monotonic()
        if calm:
            if self.probing:  # the next answer decides; the line is held meanwhile
                self._suspect_since, self._suspect_error, self.held = self.last_error, message, 0
            else:
                self.lost(message, self.last_error)
        else:
            self.held += 1
        return False

    def _overran_the_outage(self, record: logging.LogRecord) -> bool:
        """mode's "Timer commit is overlapping (interval=2.8 runtime=607.0)": a timer whose run
        spanned the outage, said when it ends, which after a 10 min freeze was 7 s past
        ``broker_back``; it is about the outage, said already."""
        if self.back_at is None or record.msg != _OVERLAPPING or len(record.args or ()) != 3:
            return False
        runtime = record.args[2]  # type: ignore[index]
        return (
            isinstance(runtime, int | float)
            and runtime >= self.last_outage_s / 2
            and time.monotonic() - self.back_at <= runtime
        )

    def lost(self, error: str, since: float) -> None:
        """The broker is away, since ``since`` (said once per outage)."""
        if self.down_since is not None:
            return
        if self._suspect_since is None:
            self.held = 0
        self._suspect_since = None
        self.down_since = since
        self.answered_at = None
        self.last_error = max(self.last_error, since)
        log.warning("broker_unreachable", error=error[:300])

    def probed(self, answered: bool, asked: float, timeout_s: float) -> None:
        """What one of ``watch``'s requests, sent at ``asked``, came to."""
        now = time.monotonic()
        if not answered:
            self._unanswered += 1
            if self._unanswered_since is None:
                self._unanswered_since = asked
            self.answered_at = None  # away again before it was said to be back
            if self._suspect_since is not None or self._unanswered >= self.confirm:
                starts = (self._unanswered_since, self._suspect_since)
                self.lost(
                    self._suspect_error
                    or f"no answer to a Kafka request within {timeout_s:g} s "
                    f"({self._unanswered} in a row)",
                    min(t for t in starts if t is not None),
                )
            return
        self._unanswered, self._unanswered_since = 0, None
        if self.down_since is not None:
            if self.answered_at is None:
                self.answered_at = now
            if self.settled():
                self.back()
        elif self._suspect_since is not None:
            if now - self.last_error >= self.quiet_s:
                log.warning(
                    "broker_client_errors",
                    error=self._suspect_error[:300],
                    lines_held_back=self.held,
                    detail="the broker answered meanwhile; the clients carried on",
                )
                self._suspect_since, self.held = None, 0
            elif now - self._suspect_since >= self.suspect_s:
                self.lost(self._suspect_error, self._suspect_since)

    def away_s(self) -> float:
        """How long the broker has been away; 0 when it is not."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def settled(self) -> bool:
        """Down, answering again for ``quiet_s``, and no client has failed for as long: the
        outage is over, and what the clients say about it (faust's commit timer that overran
        by the whole outage, say) has been said, and held back."""
        now = time.monotonic()
        return (
            self.down_since is not None
            and self.answered_at is not None
            and now - self.answered_at >= self.quiet_s
            and now - self.last_error >= self.quiet_s
        )

    def back(self) -> None:
        if self.down_since is None:
            return
        until = self.answered_at if self.answered_at is not None else time.monotonic()
        log.info(
            "broker_back",
            outage_s=round(until - self.down_since, 1),
            lines_held_back=self.held,
        )
        self.back_at, self.last_outage_s = time.monotonic(), until - self.down_since
        self.down_since = None
        self.answered_at = None


#: mode's warning of a timer that ran longer than its interval (mode/timers.py).
_OVERLAPPING = "Timer %s is overlapping (interval=%r runtime=%r)"

#: The one filter of this process (configure_logging puts it on every handler it installs).
OUTAGES = BrokerOutages()


#: ApiVersions v0 (key 18), correlation id 1, client id "rollguard": the smallest request every
#: Kafka-protocol broker answers, before any authentication.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, 9) + b"rollguard"


async def answers(bootstrap: str, speak_kafka: bool, timeout_s: float = 1.0) -> bool:
    """Whether a broker answers: a Kafka ApiVersions round trip where the listener is plain
    (a frozen broker still accepts connections: its kernel does), else a TCP connection."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), timeout_s
            )
        except (OSError, ValueError, TimeoutError):
            continue
        try:
            if not speak_kafka:
                return True
            writer.write(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
            await asyncio.wait_for(reader.readexactly(8), timeout_s)  # size, correlation id
            return True
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            continue
        finally:
            writer.close()
    return False


async def watch(
    settings: RollguardSettings,
    outages: BrokerOutages = OUTAGES,
    every_s: float = 0.5,
    timeout_s: float = 1.5,
) -> None:
    """Ask the broker every ``every_s``; ``outages.confirm`` requests in a row unanswered
    within ``timeout_s`` are an outage dated from the first of them; say ``broker_back`` when
    it is over. Runs until cancelled.

    Where the listener is TLS the request is a TCP handshake, which a frozen broker passes:
    the outage is then the clients' to notice, at their request timeout."""
    assert settings.kafka_bootstrap is not None
    plain = settings.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
    outages.probing = plain
    try:
        while True:
            await asyncio.sleep(every_s)
            asked = time.monotonic()
            answered = await answers(settings.kafka_bootstrap, plain, timeout_s)
            outages.probed(answered, asked, timeout_s)
    finally:
        outages.probing = False


class OutageLimit:
    """How long a service waits out a broker that went away (``None``: for as long as it
    takes); from ROLLGUARD_BROKER_OUTAGE_LIMIT_S."""

    def __init__(self, limit_s: float | None, outages: BrokerOutages = OUTAGES) -> None:
        self.limit_s = limit_s
        self.outages = outages

    def check(self, failing_since: float | None = None) -> None:
        """Raise BrokerUnavailable once the broker has been away longer than the limit, as
        ``watch`` dated the outage or, if earlier, as the caller's own failures did."""
        if self.limit_s is None:
            return
        starts = [t for t in (self.outages.down_since, failing_since) if t is not None]
        if starts and time.monotonic() - min(starts) > self.limit_s:
            raise BrokerUnavailable(
                f"the Kafka broker has been unreachable for "
                f"{time.monotonic() - min(starts):.0f} s, longer than "
                f"ROLLGUARD_BROKER_OUTAGE_LIMIT_S={self.limit_s:g}"
            )


class Producing(Protocol):
    """What rollguard asks of a producer when it publishes (a Sender, or aiokafka's own)."""

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> Any: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


def waits_out(exc: KafkaError) -> bool:
    """Whether a failed send is worth sending again once the broker is back: what aiokafka
    calls retriable, and its KafkaTimeoutError (no metadata, or no room in its buffer, in
    time: no broker took anything)."""
    return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)


#: Tries of a send the broker answers with UNKNOWN_SERVER_ERROR, which Kafka calls final but
#: the embedded broker answers when its storage request timed out across a freeze (a produce in
#: flight at SIGSTOP fails at SIGCONT); worth a few more tries, not an endless wait.
UNKNOWN_ERROR_TRIES = 5


async def waited_out(
    attempt: Callable[[], Awaitable[T]],
    limit: OutageLimit,
    *,
    backoff_s: float = 0.2,
    max_backoff_s: float = 1.0,
    again: Callable[[], None] | None = None,
) -> T:
    """``attempt()`` (a send that resolves once the broker took the record) until it succeeds:
    made again while it fails for want of a broker, backing off from ``backoff_s`` to
    ``max_backoff_s``, until ``limit`` says to give up; ``again`` is called before each new
    attempt. Errors another attempt would not cure are raised at once, an unknown server error
    after ``UNKNOWN_ERROR_TRIES`` tries."""
    delay = backoff_s
    failing_since: float | None = None
    unknown = 0
    while True:
        try:
            return await attempt()
        except UnknownError:
            unknown += 1
            if unknown >= UNKNOWN_ERROR_TRIES:
                raise
        except KafkaError as exc:
            if not waits_out(exc):
                raise
            failing_since = failing_since if failing_since is not None else time.monotonic()
            limit.check(failing_since)
        if again is not None:
            again()
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff_s)


class Sender:
    """A producer whose sends wait out a broker outage: a send that fails for want of a
    broker is made again, backing off from ``backoff_s`` to ``max_backoff_s``, until the broker
    takes it or ``limit`` says to give up. An attempt lasts at most the producer's request
    timeout (40 s), so the limit is checked at least that often. Errors that another attempt
    would not cure (a record too large, say) are raised at once; an unknown server error
    after ``UNKNOWN_ERROR_TRIES`` tries."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        limit: OutageLimit,
        backoff_s: float = 0.2,
        # Short: an attempt against a frozen broker lasts its 40 s request timeout anyway, and
        # a broker back during a pause is only tried again at its end.
        max_backoff_s: float = 1.0,
    ) -> None:
        self.producer = producer
        self.limit = limit
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        #: Sends made again after a failure, over this sender's life.
        self.resent = 0

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> Any:
        return await waited_out(
            lambda: self.producer.send_and_wait(topic, value, key=key, partition=partition),
            self.limit,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            again=self._again,
        )

    def _again(self) -> None:
        self.resent += 1

    async def send(self, topic: str, value: bytes, key: bytes | None) -> Any:
        """``send_and_wait`` in the shape ``rollguard.bus.DeadLetterSink`` takes."""
        return await self.send_and_wait(topic, value, key=key)

    async def send_partitioned(self, topic: str, value: bytes, key: bytes, by: bytes) -> Any:
        """Send keyed by ``key`` to the partition the default partitioner gives ``by`` (events
        keyed finer than by model, such as baselines and invalidations, still share the model's
        partition)."""
        partitions = sorted(await self.partitions_for(topic))
        partition = _PARTITIONER(by, partitions, partitions)
        return await self.send_and_wait(topic, value, key=key, partition=partition)

    async def partitions_for(self, topic: str) -> set[int]:
        delay = self.backoff_s
        failing_since: float | None = None
        while True:
            try:
                found: set[int] = await self.producer.partitions_for(topic)
                return found
            except KafkaError as exc:
                if not waits_out(exc):
                    raise
                failing_since = failing_since if failing_since is not None else time.monotonic()
                self.limit.check(failing_since)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)


_PARTITIONER = DefaultPartitioner()
