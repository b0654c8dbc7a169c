"""Clean stops for the commands that run services (`demo`, `up`, `run`).

The first SIGINT or SIGTERM cancels the command, which releases its clients and stops its
embedded broker; the broker runs in a process group of its own, so the Ctrl-C a terminal sends to
the whole group reaches only rollguard, which stops it last. Whatever is not done after
``grace_s`` (a broker that stopped answering, a client that keeps retrying), or a second signal,
ends the process at once: the abandon hooks run (the embedded broker is killed, the state
directory's broker record removed) and the exit code is what a shell expects, 130 for SIGINT
and 143 for SIGTERM, whichever way the command ended.

Handlers are installed whatever the process inherited: a shell starts background jobs with
SIGINT ignored, and `rollguard up &` must still stop on `kill -INT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: The exit code of a command stopped by each signal, as shells report it (128 + signal).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

#: The clients' own loggers, and asyncio's (a client abandoned to the stop budget is reported
#: "unclosed" as the process exits): retries against a broker that is going away are noise once
#: the user asked to stop.
CLIENT_LOGGERS = ("aiokafka", "faust", "mode", "kafka", "asyncio")

_abandon_hooks: list[Callable[[], None]] = []


@contextlib.contextmanager
def on_abandon(hook: Callable[[], None]) -> Iterator[None]:
    """Run ``hook`` if the process is ended before the block is left (a stop that took too
    long, or a second signal); it must be quick and must not touch the event loop."""
    _abandon_hooks.append(hook)
    try:
        yield
    finally:
        _abandon_hooks.remove(hook)


def _abandon(code: int, why: str) -> None:
    print(f"rollguard: {why}; exiting now", file=sys.stderr, flush=True)
    for hook in reversed(_abandon_hooks):
        with contextlib.suppress(Exception):  # nothing may stop the exit
            hook()
    os._exit(code)


class Stopped(Exception):
    """The command was stopped by a signal; it has released what it started."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"stopped by {signum.name}")
        self.exit_code = EXIT_CODES[signum]


def ignore_further_signals() -> None:
    """Once a stop is complete and said: the interpreter's own shutdown puts SIGINT back to its
    default, and a second Ctrl-C then would end the process by the signal instead of 130."""
    for signum in EXIT_CODES:
        signal.signal(signum, signal.SIG_IGN)


def dump_tasks() -> None:
    """Print where every task of the event loop waits, each await down to the innermost, to
    stderr (kill -USR1 PID): what a service that stopped making progress is stuck on
    (docs/runbook.md)."""
    tasks = asyncio.all_tasks()
    print(f"rollguard: {len(tasks)} tasks (SIGUSR1)", file=sys.stderr)
    for task in tasks:
        print(f"--- {task.get_name()}", file=sys.stderr)
        for where in _awaits(task.get_coro()):
            print(f"    {where}", file=sys.stderr)
    sys.stderr.flush()


def _awaits(coro: Any) -> list[str]:
    """``file:line in function`` of each coroutine or async generator ``coro`` awaits in."""
    out = []
    for _ in range(64):
        frame = next(
            (f for a in ("cr_frame", "ag_frame", "gi_frame") if (f := getattr(coro, a, None))),
            None,
        )
        if frame is None and type(coro).__name__ == "coroutine_wrapper":  # coro.__await__()
            inner = [c for c in gc.get_referents(coro) if hasattr(c, "cr_frame")]
            if inner:
                coro = inner[0]
                continue
        if frame is None:
            if coro is not None:  # a future, or an object awaited through its __await__
                out.append(f"awaiting {type(coro).__name__}: {str(coro)[:160]}")
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = next(
            (w for a in ("cr_await", "ag_await", "gi_yieldfrom") if (w := getattr(coro, a, None))),
            None,
        )
    return out


def run_stoppable(main: Coroutine[Any, Any, T], *, grace_s: float = 7.0) -> T:
    """``asyncio.run(main)``, stopped cleanly by SIGINT or SIGTERM (see the module doc):
    raises Stopped once everything is released, whether ``main`` returned or was cancelled."""
    received: list[signal.Signals] = []

    def again(signum: int, frame: object) -> None:
        sig = signal.Signals(signum)
        _abandon(EXIT_CODES[sig], f"{sig.name} again")

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        # Python-level handlers (as asyncio.run's own SIGINT handler), so that the one for a
        # later signal can stay in place once the loop has closed.
        def first(signum: int, frame: object) -> None:
            sig = signal.Signals(signum)
            received.append(sig)
            for each in EXIT_CODES:
                signal.signal(each, again)
            for name in CLIENT_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)
            budget = f"still stopping after {grace_s:.0f} s"
            timer = threading.Timer(grace_s, _abandon, (EXIT_CODES[sig], budget))
            timer.daemon = True
            timer.start()
            loop.call_soon_threadsafe(task.cancel)

        previous = {signum: signal.signal(signum, first) for signum in EXIT_CODES}
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        try:
            return await main
        finally:
            if not received:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    try:
        result = asyncio.run(guarded())
    except asyncio.CancelledError:
        if not received:
            raise
    if received:
        for signum in EXIT_CODES:  # asyncio.run put its own SIGINT handler back as it closed
            signal.signal(signum, again)
        raise Stopped(received[0])
    return result
