"""The built-in registry applier: moves the live pointer on rollguard.deployments.

Sets state, never toggles: the restored manifest is published as ``live`` and the bad one as
``rolled_back``, with event ids derived from the command id so a redelivered command
publishes the same facts again instead of new ones.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from rollguard.events import RollbackCommand, SystemManifest, utcnow
from services.executor.appliers.base import Effect


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
    name = "registry"

    def __init__(self, producer: AIOKafkaProducer, deployments_topic: str) -> None:
        self._producer = producer
        self._topic = deployments_topic

    async def apply(self, command: RollbackCommand) -> Effect:
        live, bad = restored_manifests(command)
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
