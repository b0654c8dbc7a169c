"""Fixtures against real parts: a Kafka-protocol broker, real databases, fresh topics per test.

The broker is ``ROLLGUARD_TEST_KAFKA`` if set, else a testcontainers Kafka when a Docker
engine answers, else the embedded Tansu broker. Every test gets its own topic prefix and
consumer groups, so tests never see each other's messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options, make_producer, provision_topics
from rollguard.events import Event, Signed
from rollguard.settings import RollguardSettings
from rollguard.signing import Role, ensure_keys, signer_of, signers

# Every `rollguard up` a test starts serves its API on a port of its own (the default, 8080,
# is one per machine); a test that needs the address reads it from the API's log line.
os.environ.setdefault("ROLLGUARD_API_PORT", "0")


def _docker_answers() -> bool:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        docker.from_env(timeout=2).ping()
    except (DockerException, OSError):
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bool]]:
    """(bootstrap, is_embedded) of the broker every broker test uses."""
    if os.environ.get("ROLLGUARD_TEST_KAFKA"):
        yield os.environ["ROLLGUARD_TEST_KAFKA"], False
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server(), False
        return
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker") / "tansu.log")
    with broker:
        yield broker.bootstrap, True


@pytest.fixture
def settings(kafka_bootstrap: tuple[str, bool], tmp_path: Path) -> RollguardSettings:
    bootstrap, embedded = kafka_bootstrap
    return RollguardSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        enable_idempotence=not embedded,
        session_timeout_ms=4_000,
        heartbeat_interval_ms=300,
        rebalance_timeout_ms=1_000,
        state_dir=tmp_path / "state",
        log_format="console",
    )


@pytest.fixture
async def topics_ready(settings: RollguardSettings) -> RollguardSettings:
    await provision_topics(settings)
    return settings


@pytest.fixture
def keys(settings: RollguardSettings) -> str:
    """A key pair for every role, trusted under the settings' trusted keys directory (as
    ``rollguard up`` makes them); the decider's key id."""
    made = dict(ensure_keys(settings))
    return made["decider"]


@pytest.fixture
async def publish(topics_ready: RollguardSettings) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    producer = make_producer(topics_ready, control=True)
    await producer.start()

    async def send(topic: str, value: Event | bytes, key: bytes | None = None) -> None:
        if isinstance(value, Event):
            key = key or getattr(value, "key", None)
            value = value.encode()
        await producer.send_and_wait(topics_ready.topic(topic), value, key=key)

    yield send
    await producer.stop()


def producer_role(event: Signed) -> Role:
    """The role whose service (or person) produces ``event`` in rollguard: the deployer for a
    deployment, else the one role allowed to sign it (rollguard.signing.signers)."""
    allowed = signers(event)
    return "deployer" if "deployer" in allowed else next(iter(allowed))


@pytest.fixture
def publish_signed(
    publish: Callable[..., Awaitable[None]], topics_ready: RollguardSettings, keys: str
) -> Callable[..., Awaitable[None]]:
    """``publish``, a control event not signed yet signed first by the key of the role that
    produces it (a person's request or approval comes signed by the key their token derives)."""

    async def send(topic: str, value: Event | bytes, key: bytes | None = None) -> None:
        if isinstance(value, Signed) and not value.signature:
            value = signer_of(topics_ready, producer_role(value)).sign(value)
        await publish(topic, value, key)

    return send


def service_env(settings: RollguardSettings, **extra: str) -> dict[str, str]:
    """The environment of a `rollguard run SERVICE` process on ``settings``' broker, topics
    and state directory, in a consumer group that notices a killed member within 3 s."""
    return {
        **os.environ,
        "ROLLGUARD_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "ROLLGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "ROLLGUARD_STATE_DIR": str(settings.state_dir),
        "ROLLGUARD_PARTITIONS": str(settings.partitions),
        "ROLLGUARD_ENABLE_IDEMPOTENCE": str(settings.enable_idempotence).lower(),
        "ROLLGUARD_SESSION_TIMEOUT_MS": "3000",
        "ROLLGUARD_HEARTBEAT_INTERVAL_MS": "300",
        "ROLLGUARD_REBALANCE_TIMEOUT_MS": "2000",
        "ROLLGUARD_LOG_FORMAT": "json",
        **extra,
    }


def free_port() -> int:
    """A loopback port nothing listens on now (for a server that cannot take port 0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def held_partitions(said: str, key: str = "partitions") -> list[int]:
    """The partitions a service's JSON log says it holds after its last rebalance (its
    ``partitions_assigned`` lines; the detector names each topic: pass the topic as ``key``)."""
    held: list[int] = []
    for line in said.splitlines():
        if "partitions_assigned" in line and line.startswith("{"):
            doc = json.loads(line)
            if key in doc:
                held = doc[key]
    return held


def group_split(logs: list[Path], partitions: int, key: str = "partitions") -> bool:
    """Whether every process of ``logs`` holds partitions and together they hold all of them."""
    held = [held_partitions(log.read_text(errors="replace"), key) for log in logs]
    return all(held) and sorted(p for h in held for p in h) == list(range(partitions))


#: The tests that run a whole `rollguard up` or kill processes over and over: under
#: pytest-xdist (make test) they share one worker, one at a time, so two of them never compete
#: for the machine's two cores while the other worker runs everything else.
HEAVY = pytest.mark.xdist_group("heavy")


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Keep a figure a test measured (a matrix, timings) to print at the end of the run,
    under the test's id (``pytest_terminal_summary``): a figure travels with the test's
    report, so it is printed under pytest-xdist too, where a print would be lost."""

    def keep(text: str) -> None:
        request.node.user_properties.append(("figure", text.strip("\n")))

    return keep


def reported_properties(
    terminalreporter: pytest.TerminalReporter, name: str
) -> list[tuple[str, Any]]:
    """(test id, value) of every user property ``name`` the run's reports carry, once per
    test (the report of its last phase holds them all)."""
    latest: dict[str, list[tuple[str, Any]]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = getattr(report, "user_properties", None)
            nodeid = getattr(report, "nodeid", "")
            if props and len(props) >= len(latest.get(nodeid, [])):
                latest[nodeid] = list(props)
    return [(nodeid, v) for nodeid, props in latest.items() for k, v in props if k == name]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = reported_properties(terminalreporter, "figure")
    if not figures:
        return
    terminalreporter.section("figures measured by the tests")
    for nodeid, text in sorted(figures):
        terminalreporter.write_line(f"{nodeid}:")
        for line in text.splitlines():
            terminalreporter.write_line(f"  {line}")


#: How much longer than on an idle machine the suite's waits may take: 1 by default, raised by
#: a CI that runs on a loaded machine (ROLLGUARD_TEST_TIME_FACTOR=3). Every wait for something
#: to happen goes through scaled(); no test asserts how fast anything is (benchmarks do).
TIME_FACTOR = float(os.environ.get("ROLLGUARD_TEST_TIME_FACTOR", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_FACTOR


class TopicReader:
    """Reads whole topics from the beginning without a group: what a test asserts on."""

    def __init__(self, settings: RollguardSettings) -> None:
        self.settings = settings

    async def read(
        self, name: str, *, until: Callable[[list[Any]], bool], timeout_s: float = 20
    ) -> list[Any]:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await consumer.start()
        got: list[Any] = []
        try:
            topic = self.settings.topic(name)
            await consumer.topics()
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            await consumer.seek_to_beginning()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + scaled(timeout_s)
            while not until(got) and loop.time() < deadline:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    got.extend(records)
            return got
        finally:
            await consumer.stop()


@pytest.fixture
def reader(topics_ready: RollguardSettings) -> TopicReader:
    return TopicReader(topics_ready)


async def until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    timeout_s = scaled(timeout_s)
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


async def run_until(service: Any, condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Run a service until ``condition`` holds; fail the test with the service's error if any."""
    task = asyncio.create_task(service.run())
    timeout_s = scaled(timeout_s)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            if task.done():
                task.result()
                raise AssertionError(f"{service.name} stopped before the condition held")
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def postgres_url() -> str:
    return os.environ.get(
        "ROLLGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )


def postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` cannot be used (its first error line), or None."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a schema of its own on the PostgreSQL server
    (skipped, saying why, when none answers)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    import sqlalchemy as sa

    problem = postgres_problem(postgres_url)
    if problem:
        pytest.skip(f"PostgreSQL not answering at {postgres_url}: {problem}")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield postgres_url + ("&" if "?" in postgres_url else "?") + f"options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def library_lines(said: str, logger: str, level: str = "error") -> list[str]:
    """The lines of a log (JSON, or stdlib's plain ``LEVEL:name:message``) that a library's
    logger (``logger`` or a child of it) said at ``level``."""
    found = []
    for line in said.splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            name, said_at = str(doc.get("logger_name", "")), doc.get("level")
        else:
            said_at, _, rest = line.partition(":")
            name, said_at = rest.partition(":")[0], said_at.lower()
        if said_at == level and (name == logger or name.startswith(logger + ".")):
            found.append(line)
    return found


async def ledgered_acks(
    settings: RollguardSettings, command_ids: set[str], n: int
) -> list[dict[str, Any]]:
    """The acks of ``command_ids`` as the real ledger records them, once it has ``n``: an
    applier's test goes command → applier → acks → ledger."""
    from rollguard_services.ledger.app import Ledger
    from rollguard_services.ledger.settings import LedgerSettings
    from rollguard_services.ledger.store import LedgerStore

    def recorded() -> list[dict[str, Any]]:
        return [
            e.payload
            for e in LedgerStore(settings.resolved_ledger_url).entries()
            if e.event_type == "CommandAck" and e.payload["command_id"] in command_ids
        ]

    ledger = Ledger(settings, LedgerSettings(group_id=f"ledger-{next(iter(command_ids))[:8]}"))
    await run_until(ledger, lambda: len(recorded()) >= n)
    return recorded()
