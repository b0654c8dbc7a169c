from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rollguard.broker import EmbeddedBroker
from rollguard.errors import EmbeddedBrokerError
from tests.conftest import HEAVY


def test_embedded_broker_starts_listens_logs_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "tansu.log")
    with broker:
        assert broker.running
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
    assert not broker.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), timeout=1):
        pass
    assert "listening on" in (tmp_path / "tansu.log").read_text()


def test_broker_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(tmp_path / "tansu.log", port=port)
        with pytest.raises(EmbeddedBrokerError, match=r"tansu\.log"):
            broker.start(timeout_s=5)
    assert not broker.running


@HEAVY
def test_a_broker_on_disk_killed_and_started_again_has_its_topics_and_groups(
    tmp_path: Path,
) -> None:
    """Issue 11: the in-memory broker forgot every topic, offset and consumer group when
    `rollguard up` was killed. On its data directory, a SIGKILL of broker and storage loses
    nothing that was acknowledged: the records, and where a group had read to."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    data = tmp_path / "broker-data"

    async def consume(bootstrap: str, want: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            "t",
            bootstrap_servers=bootstrap,
            group_id="g",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(got) < want and loop.time() < deadline:
                for records in (
                    await consumer.getmany(timeout_ms=200, max_records=want - len(got))
                ).values():
                    got += [r.value for r in records]
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    async def first_life(bootstrap: str) -> list[bytes]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("t", 3, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        for i in range(12):
            await producer.send_and_wait("t", str(i).encode(), key=str(i % 3).encode())
        await producer.stop()
        return await consume(bootstrap, 5)

    broker = EmbeddedBroker(tmp_path / "tansu.log", data_dir=data)
    broker.start()
    try:
        read_before = asyncio.run(first_life(broker.bootstrap))
        with pytest.raises(EmbeddedBrokerError, match="in use by another process"):
            EmbeddedBroker(tmp_path / "second.log", data_dir=data).start()
    finally:
        broker.kill()
    assert not broker.running
    again = EmbeddedBroker(tmp_path / "tansu.log", data_dir=data)  # another port, same data
    with again:
        read_after = asyncio.run(consume(again.bootstrap, 7))
    assert len(read_before) == 5 and len(read_after) == 7
    assert sorted(read_before + read_after, key=int) == [str(i).encode() for i in range(12)]
