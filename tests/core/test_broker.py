from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rollguard.broker import EmbeddedBroker
from rollguard.errors import EmbeddedBrokerError


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
