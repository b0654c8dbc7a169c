"""A TCP relay on loopback in front of the embedded broker, advertised as the broker's address
(``EmbeddedBroker(advertised_port=relay.port)``), so that every client connection goes through
it: with a TLS context it is the TLS listener Tansu cannot be (tests/core/test_tls.py); with an
``AccessLog`` it reads each Kafka request a client sends and records who (the client id) read
or wrote which topic and group (tests/shell/test_access.py)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import ssl
import struct
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import aiokafka.protocol
from aiokafka.protocol.api import RequestStruct

from rollguard.broker import free_port


def _request_structs() -> dict[tuple[int, int], type[RequestStruct]]:
    """aiokafka's request schemas by (api key, version): what decodes a request's body."""
    for module in pkgutil.iter_modules(aiokafka.protocol.__path__):
        importlib.import_module(f"aiokafka.protocol.{module.name}")

    def below(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    return {
        (c.API_KEY, c.API_VERSION): c
        for c in below(RequestStruct)
        if hasattr(c, "API_KEY") and hasattr(c, "API_VERSION")
    }


#: The requests that touch a topic or a group, and what the Kafka authorizer asks for each
#: (https://cwiki.apache.org/confluence/display/KAFKA/Kafka+Authorizations).
PRODUCE, FETCH, LIST_OFFSETS, OFFSET_COMMIT, OFFSET_FETCH, JOIN_GROUP, CREATE_TOPICS = (
    0,
    1,
    2,
    8,
    9,
    11,
    19,
)


@dataclass
class AccessLog:
    """What each client id did: topics written (Produce), read (Fetch, ListOffsets), created
    (CreateTopics), and consumer groups used (JoinGroup, OffsetCommit, OffsetFetch)."""

    writes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    reads: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    creates: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    groups: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    undecoded: list[tuple[str, int, int]] = field(default_factory=list)
    _structs: dict[tuple[int, int], type[RequestStruct]] = field(
        default_factory=_request_structs, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, frame: bytes) -> None:
        api_key, version, _correlation, id_len = struct.unpack_from(">hhih", frame)
        client = frame[10 : 10 + id_len].decode() if id_len >= 0 else ""
        if api_key not in (
            PRODUCE,
            FETCH,
            LIST_OFFSETS,
            OFFSET_COMMIT,
            OFFSET_FETCH,
            JOIN_GROUP,
            CREATE_TOPICS,
        ):
            return
        schema = self._structs.get((api_key, version))
        body = BytesIO(frame[10 + max(id_len, 0) :])
        try:
            if schema is None or schema.FLEXIBLE_VERSION:
                raise ValueError("no schema")
            decoded = schema.decode(body)
        except Exception:
            with self._lock:
                self.undecoded.append((client, api_key, version))
            return
        with self._lock:
            self._record(client, api_key, decoded)

    def _record(self, client: str, api_key: int, req: Any) -> None:
        if api_key == PRODUCE:
            self.writes[client].update(t[0] for t in req.topics)
        elif api_key in (FETCH, LIST_OFFSETS):
            self.reads[client].update(t[0] for t in req.topics)
        elif api_key == CREATE_TOPICS:
            self.creates[client].update(t[0] for t in req.create_topic_requests)
        elif api_key in (OFFSET_COMMIT, OFFSET_FETCH, JOIN_GROUP):
            self.groups[client].add(req.group if api_key == JOIN_GROUP else req.consumer_group)


class Relay(threading.Thread):
    """Forwards each connection on ``port`` to ``upstream``: TLS-terminating with ``tls``,
    reading the client's requests into ``access`` with one."""

    def __init__(
        self,
        upstream: int,
        *,
        tls: ssl.SSLContext | None = None,
        access: AccessLog | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.upstream = upstream
        self.tls = tls
        self.access = access
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._serve())

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    async def _serve(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert self.access is not None
            try:
                while True:
                    head = await reader.readexactly(4)
                    frame = await reader.readexactly(struct.unpack(">i", head)[0])
                    self.access.request(frame)
                    writer.write(head + frame)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            outbound = pipe if self.access is None else requests
            await asyncio.gather(outbound(reader, up_writer), pipe(up_reader, writer))

        server = await asyncio.start_server(forward, "127.0.0.1", self.port, ssl=self.tls)
        self.ready.set()
        await asyncio.to_thread(self.stopping.wait)
        server.close()
