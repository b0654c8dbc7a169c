"""A broker outage is one broker_unreachable and one broker_back line, not a line per attempt."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options
from rollguard.logs import configure_logging
from rollguard.outage import OUTAGES, answers, watch
from rollguard.settings import RollguardSettings
from tests.conftest import until


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
    assert "Unable connect" not in said and "ERROR:aiokafka" not in said, said
    assert OUTAGES.down_since is None


async def test_a_frozen_broker_is_not_taken_for_one_that_is_back(tmp_path: Path) -> None:
    """A broker stopped with SIGSTOP still accepts connections (its kernel does): `broker_back`
    must wait for an answer to a Kafka request, not a TCP handshake."""
    broker = EmbeddedBroker(tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    try:
        assert broker.pid is not None
        assert await answers(broker.bootstrap, speak_kafka=True)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            assert await answers(broker.bootstrap, speak_kafka=False)  # the handshake passes
            assert not await answers(broker.bootstrap, speak_kafka=True)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert await answers(broker.bootstrap, speak_kafka=True)
    finally:
        await asyncio.to_thread(broker.stop)
