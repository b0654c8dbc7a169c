"""A broker outage is two log lines, not hundreds a second.

While the broker is away, aiokafka logs every attempt of every client at ERROR (~430 lines a
second from `rollguard up`). ``OUTAGES``, a filter on the handlers ``configure_logging``
installs, turns the first of them into one structured ``broker_unreachable`` warning and holds
the rest back (counted); ``watch`` says ``broker_back`` once the clients have stopped failing
and the broker answers a request again, with how long it was away and how many lines it
held back. The clients themselves keep retrying as they always do.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import structlog

from rollguard.settings import RollguardSettings

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


class BrokerOutages(logging.Filter):
    """Holds back the clients' connection errors during an outage; see the module doc."""

    def __init__(self, quiet_s: float = 2.0) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.down_since: float | None = None
        self.last_error = 0.0
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(("aiokafka", "kafka")):
            return True
        message = record.getMessage()
        if self.down_since is None and not any(sign in message for sign in _SIGNS):
            return True
        self.last_error = time.monotonic()
        if self.down_since is None:
            self.down_since = self.last_error
            self.held = 0
            log.warning("broker_unreachable", error=message[:300])
        else:
            self.held += 1
        return False

    def settled(self) -> bool:
        """Down, and no client has failed for ``quiet_s``: time to look whether it is back."""
        return self.down_since is not None and time.monotonic() - self.last_error >= self.quiet_s

    def back(self) -> None:
        if self.down_since is None:
            return
        log.info(
            "broker_back",
            outage_s=round(time.monotonic() - self.down_since, 1),
            lines_held_back=self.held,
        )
        self.down_since = None


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
    settings: RollguardSettings, outages: BrokerOutages = OUTAGES, every_s: float = 0.5
) -> None:
    """Say ``broker_back`` when an outage is over; runs until cancelled."""
    assert settings.kafka_bootstrap is not None
    plain = settings.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
    while True:
        await asyncio.sleep(every_s)
        if outages.settled() and await answers(settings.kafka_bootstrap, plain):
            outages.back()
