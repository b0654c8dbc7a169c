"""The built-in registry: rollguard's own live pointer on rollguard.deployments.

The pointer is the whole system version, so it moves once, after every component step of a
command has succeeded, whichever applier changed the components outside: that is how the
router, the decider and the ledger learn what serves now. As an applier, ``registry`` stands
for "no outside system": its component steps have nothing to change and the pointer is the
whole effect.

Sets state, never toggles: the restored manifest is published as ``live`` and the bad one as
``rolled_back``, with event ids derived from the command id so a redelivered command
publishes the same facts again instead of new ones. Both are signed with the executor's key:
``live`` and ``rolled_back`` are the only manifest statuses an executor key may sign
(rollguard.signing.signers), so the router and the decider follow the pointer it moves.
"""

from __future__ import annotations

import uuid

from aiokafka.errors import KafkaError

from rollguard.events import RollbackCommand, SystemManifest, utcnow
from rollguard.outage import Producing
from rollguard.signing import Signer
from rollguard_services.executor.appliers.base import Effect, Step


def restored_manifests(command: RollbackCommand) -> tuple[SystemManifest, SystemManifest]:
    """(target made live, bad version marked rolled back), stamped now, ids from the command."""
    now = utcnow()

    def fact(manifest: SystemManifest, status: str) -> SystemManifest:
        return manifest.model_copy(
            update={
                "event_id": uuid.uuid5(uuid.NAMESPACE_OID, f"{command.command_id}:{status}").hex,
                "ts": now,
                "status": status,
                "note": f"{status} by command {command.command_id}",
            }
        )

    return fact(command.to_manifest, "live"), fact(command.from_manifest, "rolled_back")


class RegistryApplier:
    """Component steps with nothing outside to change: the live pointer carries them."""

    name = "registry"

    async def apply(self, step: Step) -> Effect:
        return Effect("applied", f"{step.component} {step.to_version} (live pointer)")

    async def close(self) -> None:
        return None


class LivePointer:
    """Publishes the restored system version as live, and the bad one as rolled back.

    An applier for the executor's last step of every command (``step.component`` is
    ``live_pointer``, the versions are system versions), so it is retried like any other.
    Given a ``rollguard.outage.Sender`` (the executor's), a broker outage is waited out inside
    the step, however long it lasts: the command was verified when it arrived, and the bad
    version serves until the pointer moves.
    """

    name = "live_pointer"

    def __init__(self, producer: Producing, deployments_topic: str, signer: Signer) -> None:
        self._producer = producer
        self._topic = deployments_topic
        self._signer = signer

    async def apply(self, step: Step) -> Effect:
        command = step.command
        # The copies of the command's manifests carry the deployer's signature: replaced.
        live, bad = (self._signer.sign(m) for m in restored_manifests(command))
        try:
            await self._producer.send_and_wait(self._topic, live.encode(), key=live.key)
            await self._producer.send_and_wait(self._topic, bad.encode(), key=bad.key)
        except KafkaError as exc:
            return Effect("failed", f"publishing the live pointer failed: {exc!r}", retriable=True)
        return Effect(
            "applied",
            f"live pointer {command.from_manifest.system_version} → "
            f"{command.to_manifest.system_version}",
        )

    async def close(self) -> None:
        return None
