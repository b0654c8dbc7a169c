"""A broker outage is one broker_unreachable and one broker_back line, not a line per attempt."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import UnknownError

from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options
from rollguard.errors import BrokerUnavailable
from rollguard.logs import configure_logging
from rollguard.outage import (
    OUTAGES,
    UNKNOWN_ERROR_TRIES,
    BrokerOutages,
    OutageLimit,
    Sender,
    answers,
    watch,
)
from rollguard.settings import RollguardSettings
from tests.conftest import library_lines, scaled, until


def _events(buf: io.StringIO, name: str) -> list[dict[str, object]]:
    found = []
    for line in buf.getvalue().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            found.append(orjson.loads(line))
    return found


async def test_a_broker_away_and_back_is_two_lines(tmp_path: Path) -> None:
    """Issue 11: during an outage the log got ~430 `ERROR:aiokafka:Unable connect` lines a
    second and no rollguard-level "broker lost" event."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    broker = EmbeddedBroker(tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    settings = RollguardSettings(kafka_bootstrap=broker.bootstrap)
    producer = AIOKafkaProducer(**client_options(settings))
    consumer = AIOKafkaConsumer("t", **client_options(settings), fetch_max_wait_ms=50)
    watching = asyncio.create_task(watch(settings, every_s=0.2))
    try:
        await producer.start()
        await consumer.start()
        await producer.send_and_wait("t", b"before")
        await asyncio.to_thread(broker.stop)  # gone: every attempt is refused
        await until(lambda: bool(_events(buf, "broker_unreachable")))
        await asyncio.sleep(2.0)  # a couple of seconds of retries, held back
        again = EmbeddedBroker(tmp_path / "broker.log", port=broker.port)
        await asyncio.to_thread(again.start)
        try:
            await until(lambda: bool(_events(buf, "broker_back")))
            await producer.send_and_wait("t", b"after")  # the clients carried on by themselves
        finally:
            await consumer.stop()
            await producer.stop()
            await asyncio.to_thread(again.stop)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await asyncio.to_thread(broker.stop)
        logging.getLogger().handlers.clear()
    said = buf.getvalue()
    assert len(_events(buf, "broker_unreachable")) == 1, said
    [back] = _events(buf, "broker_back")
    assert isinstance(back["lines_held_back"], int) and back["lines_held_back"] > 0
    assert isinstance(back["outage_s"], float) and back["outage_s"] >= 2.0
    assert "Unable connect" not in said and not library_lines(said, "aiokafka"), said
    assert OUTAGES.down_since is None


def _stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (state T in /proc), at most 10 s: on a busy
    machine a probe right after the signal was once answered."""
    states: set[str] = set()
    for _ in range(200):
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = {(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks}
        if states == {"T"}:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pid} never stopped: {states}")


async def test_a_frozen_broker_is_not_taken_for_one_that_is_back(tmp_path: Path) -> None:
    """A broker stopped with SIGSTOP still accepts connections (its kernel does): `broker_back`
    must wait for an answer to a Kafka request, not a TCP handshake."""
    broker = EmbeddedBroker(tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    try:
        assert broker.pid is not None
        assert await answers(broker.bootstrap, speak_kafka=True)
        os.kill(broker.pid, signal.SIGSTOP)
        await asyncio.to_thread(_stopped, broker.pid)  # SIGSTOP lands asynchronously
        try:
            assert await answers(broker.bootstrap, speak_kafka=False)  # the handshake passes
            assert not await answers(broker.bootstrap, speak_kafka=True)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert await answers(broker.bootstrap, speak_kafka=True)
    finally:
        await asyncio.to_thread(broker.stop)


def _freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def _thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


async def test_a_frozen_broker_is_said_at_once_and_dated_from_its_first_silence(
    tmp_path: Path,
) -> None:
    """A frozen broker fails no client request until the clients' 40 s request timeout: the
    outage was said 40 s into a freeze and `outage_s` counted from there (52 s for a 90 s
    freeze). The watch's own requests go unanswered from the first moment."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    broker = EmbeddedBroker(tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    assert broker.pid is not None
    settings = RollguardSettings(kafka_bootstrap=broker.bootstrap)
    outages = BrokerOutages()
    watching = asyncio.create_task(watch(settings, outages, every_s=0.2, timeout_s=0.5))
    try:
        await asyncio.sleep(1.0)
        _freeze(broker.pid)
        stopped = time.monotonic()
        try:
            await until(lambda: outages.down_since is not None, timeout_s=4.0)  # while frozen
            await asyncio.sleep(stopped + 5.0 - time.monotonic())
        finally:
            _thaw(broker.pid)
        thawed = time.monotonic()
        await until(lambda: outages.down_since is None)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await asyncio.to_thread(broker.stop)
        logging.getLogger().handlers.clear()
    assert len(_events(buf, "broker_unreachable")) == 1, buf.getvalue()
    [back] = _events(buf, "broker_back")
    assert isinstance(back["outage_s"], float)
    assert abs(back["outage_s"] - (thawed - stopped)) <= scaled(1.5), (back, thawed - stopped)


def test_faust_and_mode_complaints_during_an_outage_are_held_back() -> None:
    """faust's "Timer commit is overlapping (runtime=88 s)" came out as a raw line after a
    freeze; during an outage it is about the outage."""
    outages = BrokerOutages()

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

    overlapping = "Timer commit is overlapping (interval=2.8 runtime=88.3)"
    assert outages.filter(record("mode.timers", overlapping))  # no outage: said as it is
    assert not outages.filter(record("aiokafka.conn", "Unable connect to node with id 1"))
    assert not outages.filter(record("mode.timers", overlapping))
    assert not outages.filter(record("faust.transport.consumer", "Heartbeat failed"))
    assert outages.held == 2


def test_a_timer_that_ran_through_the_outage_is_held_back_after_it_too() -> None:
    """Issue 11: after a 10 min freeze, mode's "Timer commit is overlapping (runtime=607.0)"
    came 7 s after ``broker_back``, as a raw line; a timer that overran for another reason is
    still said."""
    outages = BrokerOutages()

    def overlapping(runtime: float) -> logging.LogRecord:
        message = "Timer %s is overlapping (interval=%r runtime=%r)"
        args = ("commit", 2.8, runtime)
        return logging.LogRecord("mode.timers", logging.WARNING, __file__, 1, message, args, None)

    assert outages.filter(overlapping(607.0))  # before any outage: said
    outages.lost("no answer", time.monotonic() - 600)
    outages.back()
    assert outages.last_outage_s == pytest.approx(600, abs=1)
    assert not outages.filter(overlapping(607.0))
    assert outages.filter(overlapping(3.5))  # not the outage's
    assert outages.held_after_back == 1


def test_a_client_error_while_the_broker_answers_is_not_an_outage() -> None:
    """Back from a 10 min freeze, the broker closed a consumer's fetch connection twice, and
    each made a broker_unreachable / broker_back pair of 0.0 s: while the watch can ask, a
    client's error is an outage only if the broker does not answer either."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        outages = BrokerOutages(quiet_s=0.0)
        outages.probing = True
        closed = logging.LogRecord(
            "aiokafka.consumer.fetcher",
            logging.ERROR,
            __file__,
            1,
            "Failed fetch messages from 111: KafkaConnectionError: Connection at x:1 closed",
            None,
            None,
        )
        assert not outages.filter(closed)  # held back, until the broker's answer decides
        outages.probed(True, time.monotonic(), 1.5)
        assert outages.down_since is None
        [said] = _events(buf, "broker_client_errors")
        assert "Connection at x:1 closed" in str(said["error"])
        assert not _events(buf, "broker_unreachable")
        assert not outages.filter(closed)
        erred = time.monotonic()
        outages.probed(False, time.monotonic(), 1.5)  # and this time the broker is silent
        assert outages.down_since is not None and outages.down_since <= erred
        assert len(_events(buf, "broker_unreachable")) == 1
    finally:
        logging.getLogger().handlers.clear()


async def test_a_sender_waits_out_a_freeze_longer_than_its_request_timeout(
    tmp_path: Path,
) -> None:
    """A control event sent while the broker is frozen used to fail with RequestTimedOutError
    at the request timeout, and the service with it (`rollguard up` exited). It is sent again
    until the broker takes it; the limit (unset: none) says when to give up instead."""
    broker = EmbeddedBroker(tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    assert broker.pid is not None
    settings = RollguardSettings(kafka_bootstrap=broker.bootstrap)
    topic = f"owed-{os.getpid()}"
    # A request timeout far shorter than the freeze: every attempt inside it times out.
    producer = AIOKafkaProducer(**client_options(settings), acks="all", request_timeout_ms=1_000)
    outages = BrokerOutages()
    patient = Sender(producer, OutageLimit(None, outages), backoff_s=0.1)
    impatient = Sender(producer, OutageLimit(2.0, outages), backoff_s=0.1)
    consumer = AIOKafkaConsumer(
        topic, **client_options(settings), auto_offset_reset="earliest", fetch_max_wait_ms=50
    )
    try:
        await producer.start()
        await patient.send_and_wait(topic, b"before", key=b"k")
        _freeze(broker.pid)
        try:
            owed = asyncio.create_task(patient.send_and_wait(topic, b"owed", key=b"k"))
            with pytest.raises(BrokerUnavailable, match="ROLLGUARD_BROKER_OUTAGE_LIMIT_S=2"):
                await asyncio.wait_for(impatient.send_and_wait(topic, b"given up"), scaled(20))
            assert not owed.done()
        finally:
            _thaw(broker.pid)
        await asyncio.wait_for(owed, scaled(30))
        assert patient.resent >= 1
        await consumer.start()
        values: list[bytes] = []

        async def read() -> None:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(r.value for r in records if r.value is not None)

        deadline = time.monotonic() + scaled(20)
        while b"owed" not in values and time.monotonic() < deadline:
            await read()
        assert b"owed" in values, values
    finally:
        await consumer.stop()
        await producer.stop()
        await asyncio.to_thread(broker.stop)


class _Refusing:
    """A producer whose broker answers UNKNOWN_SERVER_ERROR ``times`` times, then takes the
    record: what the embedded broker answers, at SIGCONT, to a produce that was in flight at
    SIGSTOP (its storage request timed out across the freeze), which no test can time."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    async def send_and_wait(self, *args: object, **kwargs: object) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise UnknownError()
        return "taken"


async def test_an_unknown_server_error_is_tried_again_a_few_times() -> None:
    refusing = _Refusing(times=2)
    sender = Sender(refusing, OutageLimit(None, BrokerOutages()), backoff_s=0.01)  # type: ignore[arg-type]
    assert await sender.send_and_wait("t", b"v") == "taken"
    assert refusing.calls == 3
    always = _Refusing(times=1_000)
    sender = Sender(always, OutageLimit(None, BrokerOutages()), backoff_s=0.01)  # type: ignore[arg-type]
    with pytest.raises(UnknownError):
        await sender.send_and_wait("t", b"v")
    assert always.calls == UNKNOWN_ERROR_TRIES
