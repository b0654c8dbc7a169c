"""The command applier: runs a configured executable per step, for shops that roll back with
their own scripts.

The step document (command id, component, from/to versions, both manifests) is JSON on
stdin, and the essentials are in ``ROLLGUARD_*`` environment variables for shell scripts.
Exit 0 is applied; an exit code listed as retriable (75, EX_TEMPFAIL, by default), death by a
signal or a timeout is a retriable failure; any other exit is final. The script is expected
to set state, not toggle it: it may run again for the same step after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import orjson

from rollguard.errors import ConfigError
from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import CommandSettings

#: What a script learns of its step from the environment (besides the JSON on stdin).
STEP_VARIABLES = (
    "ROLLGUARD_COMMAND_ID",
    "ROLLGUARD_IDEMPOTENCY_KEY",
    "ROLLGUARD_MODEL_ID",
    "ROLLGUARD_COMPONENT",
    "ROLLGUARD_FROM_VERSION",
    "ROLLGUARD_TO_VERSION",
    "ROLLGUARD_COMPENSATION",
)

#: How much of the script's output goes into the ack's detail.
_OUTPUT_SHOWN = 300


class CommandApplier:
    name = "command"

    def __init__(self, settings: CommandSettings) -> None:
        if not settings.argv:
            raise ConfigError(
                'the command applier needs ROLLGUARD_EXECUTOR_COMMAND__ARGV (JSON list: ["path", ...])'
            )
        self.settings = settings

    async def apply(self, step: Step) -> Effect:
        s = self.settings
        # The child inherits the executor's environment (PATH, credentials its script needs),
        # plus what this step is about.
        values = (
            step.command.command_id,
            step.idempotency_key,
            step.command.model_id,
            step.component,
            step.from_version,
            step.to_version,
            "1" if step.compensation else "0",
        )
        env = {**os.environ, **dict(zip(STEP_VARIABLES, values, strict=True))}
        try:
            proc = await asyncio.create_subprocess_exec(
                *s.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills its children too
            )
        except OSError as exc:
            return Effect("failed", f"cannot run {s.argv[0]}: {exc}", retriable=False)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(orjson.dumps(step.document())), s.timeout_s
            )
        except TimeoutError:
            self._kill(proc)
            await proc.wait()
            return Effect("failed", f"{s.argv[0]} ran longer than {s.timeout_s:g}s", True)
        except asyncio.CancelledError:
            self._kill(proc)
            raise
        code = proc.returncode
        assert code is not None  # communicate() returned, so the process has exited
        said = (out or b"").decode(errors="replace").strip()[-_OUTPUT_SHOWN:]
        complaint = (err or b"").decode(errors="replace").strip()[-_OUTPUT_SHOWN:]
        if code == 0:
            return Effect("applied", said or f"{s.argv[0]} exited 0")
        if code < 0:
            return Effect("failed", f"{s.argv[0]} killed by signal {-code}: {complaint}", True)
        retriable = code in s.retriable_exit_codes
        return Effect("failed", f"{s.argv[0]} exited {code}: {complaint or said}", retriable)

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        return None
