"""Builds services by name and runs them together: what `up`, `run` and the demo share.

The place that builds each service's settings from the environment (ROLLGUARD_<SERVICE>_*; the
CLI validates them all at start, so that a bad value is one line before anything runs); the
services take them as constructor arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from rollguard import signing, topics
from rollguard.broker import EmbeddedBroker
from rollguard.bus import negotiate_idempotence, provision_topics, wait_for_broker
from rollguard.discovery import BrokerRecord
from rollguard.errors import UsageError
from rollguard.logs import get_logger
from rollguard.outage import watch
from rollguard.policy import PolicySource
from rollguard.secrets import check_private, write_private
from rollguard.service import Service
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.api.app import Api
from rollguard_services.api.settings import ALERTMANAGER_TOKEN, ApiSettings
from rollguard_services.decider.app import Decider
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.kinds import config_classes
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import ExecutorSettings
from rollguard_services.ledger.app import Ledger
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.view import LedgerView
from rollguard_services.notifier.app import Notifier
from rollguard_services.notifier.settings import NotifierSettings
from rollguard_services.router.app import RouterService
from rollguard_services.router.settings import RouterSettings
from rollguard_shell.access import internal_topics
from rollguard_shell.stopping import on_abandon

log = get_logger("rollguard_shell.runner")


def policy(settings: RollguardSettings) -> PolicySource:
    """The policy every service follows; detector entries are checked against their kinds at
    load, so a typo fails with file, line and field before anything runs."""
    return PolicySource(settings.policy_path, kinds=config_classes())


def _router(settings: RollguardSettings) -> Service:
    return RouterService(settings, RouterSettings())


def _detector(settings: RollguardSettings) -> Service:
    return Detector(settings, policy(settings), DetectorSettings())


def _decider(settings: RollguardSettings) -> Service:
    return Decider(
        settings,
        policy(settings),
        load_signer(settings.resolved_signing_key_file),
        DeciderSettings(),
    )


def _executor(settings: RollguardSettings) -> Service:
    return Executor(settings, ExecutorSettings(), policy=policy(settings))


def _ledger(settings: RollguardSettings) -> Service:
    return Ledger(settings, LedgerSettings())


def _notifier(settings: RollguardSettings) -> Service:
    return Notifier(settings, NotifierSettings(), policy=policy(settings))


def _api(settings: RollguardSettings) -> Service:
    return api_service(settings, ApiSettings())


def api_service(settings: RollguardSettings, svc: ApiSettings) -> Api:
    """The API over the ledger the settings point at (read as `incident show` reads it)."""
    from rollguard_shell.commands.ledger import recorded_trust

    records = LedgerView.of(settings, lambda: recorded_trust(settings))
    return Api(settings, svc, records, policy(settings))


#: Every service `rollguard run` knows, by the name docker-compose uses.
SERVICES: dict[str, Callable[[RollguardSettings], Service]] = {
    "router": _router,
    "detector": _detector,
    "decider": _decider,
    "executor": _executor,
    "ledger": _ledger,
    "notifier": _notifier,
    "api": _api,
}

#: What `rollguard up` runs; the router is the reference integration, opt-in outside the demo.
CORE_SERVICES = ("ledger", "executor", "decider", "detector", "notifier", "api")


def build_service(name: str, settings: RollguardSettings) -> Service:
    try:
        factory = SERVICES[name]
    except KeyError:
        raise UsageError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None
    return factory(as_client(name, settings))


def as_client(name: str, settings: RollguardSettings) -> RollguardSettings:
    """The settings a service's (or the demo's stand-in deployer's) clients use: its own client id (rollguard-detector), which the
    broker's logs, quotas and an audit of who read and wrote what (docs/security.md) name."""
    return settings.model_copy(update={"client_id": f"{settings.client_id}-{name}"})


#: The services that sign what they publish, and the role of their key.
SIGNING_ROLES: dict[str, signing.Role] = {
    "decider": "decider",
    "detector": "detector",
    "executor": "executor",
    "api": "api",
}


def ensure_keys(
    settings: RollguardSettings, roles: tuple[signing.Role, ...] = signing.ROLES
) -> None:
    """Create the key pair of every role on first use of the default key locations
    (rollguard.signing.ensure_keys); refuse a key group or others may read before anything
    starts (a service would, with a broker up)."""
    for role, kid in signing.ensure_keys(settings, roles):
        log.info("generated_signing_key", role=role, path=str(settings.key_file(role)), key_id=kid)
    for role in roles:
        path = settings.key_file(role)
        if path.exists():
            check_private(path, f"{role} signing key")


def ensure_alertmanager_secret(settings: RollguardSettings) -> None:
    """`rollguard up` makes the Alertmanager receiver's secret once (0600 under the state
    directory) unless ROLLGUARD_API_ALERTMANAGER_TOKEN_FILE names one: the receiver is on
    in the all-in-one installation, and its secret is never logged."""
    import secrets

    path = settings.state_dir / ALERTMANAGER_TOKEN
    if ApiSettings().alertmanager_token_file is None and not path.exists():
        write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
        log.info("generated_alertmanager_secret", path=str(path))


def _retention(settings: RollguardSettings) -> tuple[dict[str, int], set[str]]:
    """How the embedded broker on disk keeps each partition bounded (rollguard.objectstore):
    the newest batches of every topic that is not compacted, the latest record per key of the
    compacted ones (the decider's table included)."""
    keep = settings.embedded_keep_batches
    internal = internal_topics(settings)
    trimmed = [settings.topic(t.name) for t in topics.ALL if not t.compacted]
    trimmed += [name for name, configs in internal.items() if "cleanup.policy" not in configs]
    compacted = {settings.topic(t.name) for t in topics.ALL if t.compacted}
    compacted |= {name for name, configs in internal.items() if "cleanup.policy" in configs}
    # compacted ones keep their newest batches whole too, as Kafka never compacts the active
    # segment: a consumer not far behind reads every record
    return dict.fromkeys([*trimmed, *compacted], keep), compacted


@contextlib.asynccontextmanager
async def kafka(
    settings: RollguardSettings, broker_log: Path | None = None, *, record: bool = False
) -> AsyncIterator[RollguardSettings]:
    """Settings pointing at a reachable broker with every topic provisioned, and control
    producers the broker accepts (idempotent where it can do it).

    Without ROLLGUARD_KAFKA_BOOTSTRAP an embedded broker is started for the duration, its log
    kept beside ``broker_log`` in ``broker-data/`` (unless ROLLGUARD_EMBEDDED_STORAGE=memory), so
    a later start on the same state directory has every topic, offset and group again; with
    ``record`` (``rollguard up``) its address is written to the state directory, where every
    other command run with the same state directory finds it.
    """
    broker: EmbeddedBroker | None = None
    written: BrokerRecord | None = None
    if settings.embedded:
        log_path = broker_log or settings.state_dir / "broker.log"
        data_dir = log_path.parent / "broker-data" if settings.embedded_storage == "disk" else None
        keep_last, compacted = _retention(settings)
        broker = EmbeddedBroker(
            log_path, data_dir=data_dir, keep_last=keep_last, compacted=compacted
        )
        await asyncio.to_thread(broker.start)
        settings = settings.model_copy(
            update={
                "kafka_bootstrap": broker.bootstrap,
                # Tansu holds every group join for about half the session timeout
                # (measured: 10 s → 5 s, 6 s → 3 s, whatever the rebalance timeout): one
                # process owns every group here, so keep it short.
                "session_timeout_ms": min(settings.session_timeout_ms, 4_000),
                "heartbeat_interval_ms": min(settings.heartbeat_interval_ms, 500),
                "rebalance_timeout_ms": min(settings.rebalance_timeout_ms, 1_000),
            }
        )
        log.info(
            "embedded_broker",
            bootstrap=broker.bootstrap,
            log=str(broker.log_path),
            data=str(data_dir) if data_dir is not None else "memory",
        )

    def abandon() -> None:  # the process is ending now: leave no broker and no record behind
        if broker is not None:
            broker.kill()
        if written is not None:
            written.remove(settings.state_dir)

    try:
        with on_abandon(abandon):
            await wait_for_broker(settings)
            settings = await negotiate_idempotence(settings)
            created = await provision_topics(settings, internal=internal_topics(settings))
            log.info("topics", bootstrap=settings.kafka_bootstrap, created=created)
            if broker is not None and record:
                written = BrokerRecord(broker.bootstrap, os.getpid())
                written.write(settings.state_dir)
            watching = asyncio.create_task(watch(settings), name="broker-watch")
            try:
                yield settings
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
    finally:
        if written is not None:
            written.remove(settings.state_dir)
        if broker is not None:
            await asyncio.to_thread(broker.stop)


async def run_services(services: Sequence[Service]) -> None:
    """Run services until one fails or the caller cancels; a failure stops them all. An API
    among them reports every one's readiness (/readyz)."""
    for service in services:
        if isinstance(service, Api):
            service.peers = lambda: services
            service.any_port_if_taken = len(services) > 1
    async with asyncio.TaskGroup() as tasks:
        for service in services:
            tasks.create_task(service.run(), name=service.name)


async def wait_ready(services: Sequence[Service], timeout_s: float = 60.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in services)), timeout=timeout_s)
