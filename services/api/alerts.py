"""The Alertmanager receiver: alerts posted to the API become signed Alert facts and breaches.

Alertmanager authenticates with a bearer secret (``ROLLGUARD_API_ALERTMANAGER_TOKEN_FILE``;
``http_config.authorization.credentials_file`` on its side). Each alert about a model is
published once to the alerts topic (the ledger records it) and, when the model's policy
gives its name a tier, as a Breach to the breaches topic (the decider acts on it), both
signed with the API's key. A notification repeated (a group change, ``repeat_interval``) is
answered without publishing again; ids derived from the alert make a repeat after a restart
the same fact to the ledger and the decider.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, Field

from rollguard import metrics, topics
from rollguard.alerts import Received, WebhookPayload, breach_id, receive
from rollguard.bus import start_control_producer
from rollguard.errors import ConfigError
from rollguard.events import Alert, Breach, ModelStatus
from rollguard.logs import get_logger
from rollguard.policy import PolicySource
from rollguard.secrets import check_private
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, signer_of

log = get_logger("rollguard.api")

#: A model's status as the decider last published it (None: no deployment known).
StatusOf = Callable[[str], ModelStatus | None]

#: How many alerts' facts the receiver remembers having published (a repeat is not sent again).
REMEMBERED = 50_000
#: The shortest secret taken: a guessable one is no authentication.
MIN_SECRET = 16


class AlertTaken(BaseModel):
    fingerprint: str
    alertname: str = ""
    model_id: str | None = None
    outcome: str = Field(
        description="breach, resolved, unmapped, unknown_model, ambiguous_version; repeat "
        "(published before); skipped (not about a model, or labels no event can carry)."
    )
    detail: str = ""
    alert_event_id: str | None = None
    breach_id: str | None = None


class AlertsAnswer(BaseModel):
    received: int
    published: int
    alerts: list[AlertTaken]


def read_secret(path: Path) -> str:
    """The receiver's bearer secret in ``path`` (one line, private to its owner)."""
    check_private(path, "Alertmanager receiver secret")
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"Alertmanager receiver secret {path}: {exc.strerror}") from exc
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"Alertmanager receiver secret {path} is shorter than {MIN_SECRET} characters"
        )
    return secret


class AlertReceiver:
    """Publishes what ``rollguard.alerts.receive`` makes of each notification."""

    def __init__(
        self,
        settings: RollguardSettings,
        secret: str,
        policy: PolicySource,
        status_of: StatusOf,
        signer: Signer | None = None,
    ) -> None:
        self.settings = settings
        self._secret = secret.encode()
        self.policy = policy
        self.status_of = status_of
        self.signer = signer or signer_of(settings, "api")
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._published: OrderedDict[str, None] = OrderedDict()

    def authentic(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._secret)

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                self._producer, self.settings = await start_control_producer(self.settings)
            return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def take(self, payload: WebhookPayload, now: datetime) -> AlertsAnswer:
        """Publish every alert of ``payload`` not published before; the answer says what
        became of each. A broker that does not take them raises (the caller answers 503,
        and Alertmanager sends the notification again)."""
        received = receive(payload, self.policy.for_model, self.status_of, now)
        answers: list[AlertTaken] = []
        sends = []
        claimed: list[str] = []
        producer = await self._started()
        for got, raw in zip(received, payload.alerts, strict=True):
            answer = _answer(got, raw.fingerprint, raw.labels.get("alertname", ""))
            # an episode that made its breach is done: its repeats say nothing new, whatever
            # they would be answered now (ambiguous right after the rollback it caused)
            episode = breach_id(raw.fingerprint, raw.startsAt)
            made = raw.status == "firing" and episode in self._published
            if got.alert is not None and (made or got.alert.event_id in self._published):
                answer.outcome, answer.detail = "repeat", "published before"
            elif got.alert is not None:
                # claimed before the sends: a notification posted twice at once (Alertmanager
                # run highly available), or an alert twice in one, is published once
                self._remember(got.alert.event_id)
                claimed.append(got.alert.event_id)
                if got.breach is not None:
                    self._remember(episode)
                    claimed.append(episode)
                    sends.append(self._send(producer, topics.BREACHES.name, got.breach))
                sends.append(self._send(producer, topics.ALERTS.name, got.alert))
            answers.append(answer)
        try:
            await asyncio.gather(*sends)
        except BaseException:
            for event_id in claimed:  # not published: the next notification tries again
                self._published.pop(event_id, None)
            raise
        for got, answer, raw in zip(received, answers, payload.alerts, strict=True):
            metrics.ALERTS.labels(raw.status, answer.outcome).inc()
            if got.alert is not None and answer.outcome != "repeat":
                log.info(
                    "alert_received",
                    model_id=got.alert.model_id,
                    alertname=got.alert.alertname,
                    status=got.alert.status,
                    outcome=got.alert.outcome,
                    breach_id=got.alert.breach_id,
                )
        published = sum(1 for a in answers if a.alert_event_id and a.outcome != "repeat")
        return AlertsAnswer(received=len(answers), published=published, alerts=answers)

    async def _send(self, producer: AIOKafkaProducer, topic: str, event: Alert | Breach) -> None:
        signed = self.signer.sign(event)
        await producer.send_and_wait(self.settings.topic(topic), signed.encode(), key=signed.key)

    def _remember(self, event_id: str) -> None:
        self._published[event_id] = None
        while len(self._published) > REMEMBERED:
            self._published.popitem(last=False)


def _answer(got: Received, fingerprint: str, alertname: str) -> AlertTaken:
    if got.alert is None:
        return AlertTaken(
            fingerprint=fingerprint, alertname=alertname, outcome="skipped", detail=got.skipped
        )
    return AlertTaken(
        fingerprint=fingerprint,
        alertname=alertname,
        model_id=got.alert.model_id,
        outcome=got.alert.outcome,
        alert_event_id=got.alert.event_id,
        breach_id=got.alert.breach_id,
    )
