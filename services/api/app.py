"""API service (FastAPI on uvicorn): the control API, the dashboard, the probes and /metrics.

It follows model-status for the board, reads the ledger for incidents (a ``Records`` the shell
hands over) and acts only by publishing the same signed requests and approvals as the CLI.
uvicorn runs inside the service's event loop, its signal handling left to the shell (Ctrl-C
stops `rollguard up` as a whole, rollguard_shell.stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn

from rollguard.logs import get_logger
from rollguard.metrics import READY, exposition
from rollguard.outage import OUTAGES
from rollguard.policy import PolicySource
from rollguard.service import Service
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, TrustSource
from rollguard_services.api.alerts import AlertReceiver, read_secret
from rollguard_services.api.board import Board
from rollguard_services.api.routes import Records, build
from rollguard_services.api.settings import ApiSettings

log = get_logger("rollguard.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the shell owns SIGINT and SIGTERM
        yield


class Api:
    name = "api"

    def __init__(
        self,
        settings: RollguardSettings,
        svc: ApiSettings,
        records: Records,
        policy: PolicySource,
        trust: Trust | None = None,
        peers: Callable[[], Sequence[Service]] = tuple,
    ) -> None:
        self.settings = settings
        self.svc = svc
        self.board = Board(settings, trust or TrustSource(settings))
        self.records = records
        self.policy = policy
        #: The other services of this process, whose readiness /readyz reports too.
        self.peers = peers
        self.ready = asyncio.Event()
        #: Where it listens, once it does (the port is chosen by the system for port 0).
        self.url: str | None = None
        #: Beside the other services (`rollguard up`): when its port is taken, listen on any
        #: free one and say so, rather than stop the safety net over its dashboard. Alone
        #: (`rollguard run api`), a taken port stops it, as any server.
        self.any_port_if_taken = False
        #: The Alertmanager receiver, when a secret is set (ApiSettings.alertmanager_token_file).
        self.alerts: AlertReceiver | None = None
        secret_file = svc.alertmanager_secret_path(settings.state_dir)
        if secret_file is not None:
            self.alerts = AlertReceiver(
                settings, read_secret(secret_file), policy, self.board.statuses.get
            )
            self._secret_file = secret_file

    def readiness(self) -> dict[str, bool]:
        parts = {p.name: p.ready.is_set() for p in self.peers() if p is not self}
        parts["api"] = self.board.caught_up.is_set()
        for name, ok in parts.items():
            READY.labels(name).set(1 if ok else 0)
        parts["broker"] = OUTAGES.down_since is None  # rollguard.outage.watch says when away
        return parts

    def _exposition(self) -> tuple[bytes, str]:
        self.readiness()  # rollguard_service_ready as of this scrape
        return exposition()

    async def _audit(self, app: Any) -> None:
        """Verify the ledger every ``verify_every_s`` (rollguard_ledger_verify_ok); a ledger
        not there yet, or not readable, is said and tried again."""
        while True:
            try:
                await app.state.check_integrity(within_s=0)
            except Exception as exc:  # said; the next round tries again
                log.warning("ledger_verify_failed", reason=str(exc).splitlines()[0][:300])
            await asyncio.sleep(self.svc.verify_every_s)

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.svc.host else socket.AF_INET
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.svc.host, self.svc.port))
        except OSError as exc:
            if not self.any_port_if_taken or exc.errno != errno.EADDRINUSE:
                sock.close()
                raise
            log.warning(
                "api_port_taken",
                port=self.svc.port,
                hint="listening on another port (the listening line says which); set "
                "ROLLGUARD_API_PORT",
            )
            sock.bind((self.svc.host, 0))
        return sock

    async def run(self) -> None:
        app = build(
            self.settings,
            self.svc,
            self.board,
            self.records,
            self.policy,
            self.readiness,
            self._exposition,
            alerts=self.alerts,
        )
        log.info("started", bootstrap=self.settings.kafka_bootstrap)
        sock = self._listen()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        server = _Server(config)
        following = asyncio.create_task(self.board.follow(), name="api-board")
        auditing = asyncio.create_task(self._audit(app), name="api-ledger-verify")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="api-http")
        try:
            caught_up = asyncio.create_task(self.board.caught_up.wait())
            await asyncio.wait({caught_up, following}, return_when=asyncio.FIRST_COMPLETED)
            caught_up.cancel()
            await asyncio.gather(caught_up, return_exceptions=True)
            if following.done():
                following.result()  # the board could not read model-status: say why
            while not server.started:
                if serving.done():
                    serving.result()  # the server failed to start: say why
                await asyncio.sleep(0.02)
            log.info("listening", url=self.url, models=len(self.board.statuses))
            if self.alerts is not None:
                log.info(
                    "alertmanager_receiver",
                    url=f"{self.url}/api/alerts/alertmanager",
                    secret_file=str(self._secret_file),
                    key_id=self.alerts.signer.key_id,
                )
            self.ready.set()
            done, _ = await asyncio.wait({following, serving}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure of either stops the service
        finally:
            server.should_exit = True
            following.cancel()
            auditing.cancel()
            await asyncio.gather(following, auditing, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(serving), timeout=3)
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            if self.alerts is not None:  # no request can start it again now
                await self.alerts.stop()
            sock.close()
            log.info("stopped", url=self.url)
