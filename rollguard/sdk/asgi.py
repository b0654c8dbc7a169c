"""A middleware for ASGI servers (FastAPI, Starlette) and a decorator for a predict function.

``MonitorMiddleware`` times every request to the paths it watches and records its latency
(a 5xx answer, or an exception, as an error). ``monitored`` wraps a predict function, sync or
async: it records the prediction it returns, with the features it was given, under the request
id the middleware set (or a new one), and its latency too when no middleware times the request.
Neither ever changes what the server answers: an exception of the predict function is recorded
and raised again, as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import numbers
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from rollguard.events import new_id
from rollguard.sdk import Monitor, SyncMonitor

F = TypeVar("F", bound=Callable[..., Any])
ASGIApp = Callable[
    [dict[str, Any], Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]
]

#: The id of the request being served, set by the middleware (from ``X-Request-ID`` if the
#: client sent one, else new), read by ``monitored``.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rollguard_request_id", default=None
)


class MonitorMiddleware:
    """``app.add_middleware(MonitorMiddleware, monitor=monitor, paths=("/predict",))``."""

    def __init__(
        self, app: ASGIApp, monitor: Monitor | SyncMonitor, paths: tuple[str, ...] = ("/",)
    ) -> None:
        self.app = app
        self.monitor = monitor
        self.paths = paths

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[..., Awaitable[Any]],
        send: Callable[..., Awaitable[Any]],
    ) -> None:
        if scope.get("type") != "http" or not scope.get("path", "").startswith(self.paths):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode(errors="replace")[:256]
        rid = given or new_id()
        token = REQUEST_ID.set(rid)
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            self._timed(rid, started, type(exc).__name__)
            raise
        finally:
            REQUEST_ID.reset(token)
        self._timed(rid, started, f"http_{status[0]}" if status[0] >= 500 else None)

    def _timed(self, rid: str, started: float, error: str | None) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.monitor.record_latency(rid, ms, error=error)


def monitored(
    monitor: Monitor | SyncMonitor,
    features: Callable[..., Mapping[str, float | str | None] | None] | None = None,
) -> Callable[[F], F]:
    """``@monitored(monitor)`` on ``def predict(features: dict) -> float``: the first argument
    that is a mapping is taken as the features, unless ``features(*args, **kwargs)`` says."""

    def inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if features is not None:
            return features(*args, **kwargs)
        return next((a for a in (*args, *kwargs.values()) if isinstance(a, Mapping)), None)

    def done(rid: str, timed: bool, started: float, result: Any, args: Any, kwargs: Any) -> None:
        # the prediction is served whatever happens here: a features function that fails,
        # features that are no mapping, are the telemetry's loss, counted, never the caller's
        try:
            if timed:  # no middleware timed this request: the call is the request
                monitor.record_latency(rid, (time.perf_counter() - started) * 1000)
            value = _prediction(result)
            if value is not None:
                inp = inputs(args, kwargs)
                monitor.record_prediction(rid, value, features=dict(inp) if inp else None)
        except Exception as exc:  # counted below; the request goes on
            _unrecorded(monitor, exc)

    def failed(rid: str, timed: bool, started: float, exc: BaseException) -> None:
        try:
            if timed:
                ms = (time.perf_counter() - started) * 1000
                monitor.record_latency(rid, ms, error=type(exc).__name__)
        except Exception as unexpected:
            _unrecorded(monitor, unexpected)

    def wrap(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                rid, timed = REQUEST_ID.get() or new_id(), REQUEST_ID.get() is None
                started = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    failed(rid, timed, started, exc)
                    raise
                done(rid, timed, started, result, args, kwargs)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rid, timed = REQUEST_ID.get() or new_id(), REQUEST_ID.get() is None
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failed(rid, timed, started, exc)
                raise
            done(rid, timed, started, result, args, kwargs)
            return result

        return cast(F, wrapper)

    return wrap


def _prediction(result: Any) -> float | str | None:
    """What of a predict function's result is the prediction: a number (numpy's too) or a
    label; anything else (a dict, a list) is not recorded."""
    if isinstance(result, bool):
        return None
    if isinstance(result, str):
        return result
    if isinstance(result, numbers.Real):  # int, float, numpy.float32, numpy.int64...
        return float(result)
    return None


def _unrecorded(monitor: Monitor | SyncMonitor, exc: Exception) -> None:
    """Counted (``dropped_unrecordable``): the caller's request is not the telemetry's to fail."""
    with contextlib.suppress(Exception):
        monitor.stats[f"dropped_unrecordable_{type(exc).__name__}"] += 1
