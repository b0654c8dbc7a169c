"""The control API (FastAPI): what the dashboard and other tools read and do.

Reads come from the status board (model-status), the ledger (incidents, integrity) and the
policy. Actions are a person's: the bearer token is their role token, from which their key is
derived to sign the request or approval (rollguard.operator), exactly as the CLI does; the
API keeps neither the token nor the key. The answer is the decider's, waited for: 200 taken
(a rollback applied or verified when asked to wait for it), 202 awaiting approval, 409 refused
(with the decider's reasons), 502 the rollback it launched failed, 504 no answer in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, cast

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError

from rollguard import metrics as metrics_of
from rollguard.alerts import WebhookPayload
from rollguard.answers import Answer, Wait
from rollguard.errors import RollguardError, UsageError
from rollguard.events import Approval, ModelStatus, PendingApproval, RollbackRequest, utcnow
from rollguard.operator import NotAllowed, decision_model, person, submit
from rollguard.policy import Mode, PolicySource, Role
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust
from rollguard_services.api.alerts import AlertReceiver, AlertsAnswer
from rollguard_services.api.board import Board
from rollguard_services.api.settings import ApiSettings

DASHBOARD = Path(__file__).with_name("dashboard")
#: How long a ledger verification result is served before the chain is read again, and how
#: soon it is read again when the ledger has grown since.
VERIFY_EVERY_S = 15.0
#: The largest Alertmanager notification taken (its default groups hold far less).
MAX_ALERTS_BODY = 1 << 20

REVERIFY_GROWN_S = 2.0


class Records(Protocol):
    """The ledger's read side (services/ledger/view.py, handed over by the shell)."""

    def incidents(self, model_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...
    def incident(self, ident: str) -> dict[str, Any] | None: ...
    def verify(self) -> dict[str, Any]: ...
    def head(self) -> int: ...


Token = Annotated[str | None, Header(alias="Authorization", description="Bearer <role token>")]
ReceiverToken = Annotated[
    str | None, Header(alias="Authorization", description="Bearer <the receiver's secret>")
]
ModelId = Annotated[str, PathParam(min_length=1, max_length=256)]
EventId = Annotated[str, PathParam(min_length=1, max_length=128)]

Health = Literal[
    "ok", "no_target", "rolling_back", "verifying", "awaiting_approval", "paused", "locked"
]


class ModelView(BaseModel):
    model_id: str
    mode: Mode = Field(description="In force: switched at run time, else the policy's.")
    health: Health = Field(description="What colours the model on the dashboard.")
    status: ModelStatus


class IncidentSummary(BaseModel):
    id: str
    model_id: str | None
    ts: str | None
    action: str
    tier: str | None
    level: int | None
    reasons: list[str]
    target_system_version: str | None
    command_id: str | None
    state: str


class TimelineEntry(BaseModel):
    seq: int
    ts: str | None
    event_type: str
    event_id: str
    summary: str
    details: list[str]


class IncidentDetail(BaseModel):
    id: str
    model_id: str | None
    command_ids: list[str]
    figures: dict[str, float]
    decision: dict[str, Any]
    timeline: list[TimelineEntry]


class PendingView(PendingApproval):
    model_id: str


class Integrity(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints_checked: int = 0
    checkpoint_problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    checked_at: float = Field(description="Unix time of the check.")


class Problem(BaseModel):
    detail: str


class Waiting(BaseModel):
    wait: Wait = Field(default="decided", description="Answer once decided, applied or verified.")
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class RollbackBody(Waiting):
    role: Role
    reason: str = Field(default="", max_length=4096)
    to_system_version: str | None = Field(default=None, min_length=1, max_length=256)
    level: Literal[1, 2, 3, 4] | None = None


class OperateBody(BaseModel):
    role: Role
    reason: str = Field(min_length=1, max_length=4096, description="Why: the ledger keeps it.")
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class ModeBody(OperateBody):
    mode: Mode


class ApproveBody(Waiting):
    role: Role
    comment: str = Field(default="", max_length=4096)
    model_id: str | None = Field(default=None, min_length=1, max_length=256)


class AnswerView(BaseModel):
    sent: str = Field(description="The event id of the request or approval sent.")
    outcome: str
    lines: list[str] = Field(description="The answer in words, every reason with its detail.")
    decision: dict[str, Any] | None
    earlier: list[dict[str, Any]]
    acks: list[dict[str, Any]]
    after: list[dict[str, Any]]


_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The broker or the ledger does not answer."},
    401: {"model": Problem, "description": "No role token, or one the decider does not know."},
    403: {"model": Problem, "description": "The token is another role's."},
    409: {"model": AnswerView, "description": "Refused by the decider (see its reasons)."},
    502: {"model": AnswerView, "description": "The rollback it launched failed."},
    504: {"model": AnswerView, "description": "No answer in time."},
}
_STATUS_OF = {"refused": 409, "failed": 502, "timed_out": 504, "awaiting_approval": 202}


def health(status: ModelStatus) -> Health:
    if status.locked:
        return "locked"
    if status.paused is not None:
        return "paused"
    if status.in_flight is not None:
        return "rolling_back"
    if status.verifying is not None:
        return "verifying"
    if status.pending:
        return "awaiting_approval"
    if status.rollback_target is None:
        return "no_target"
    return "ok"


def build(
    settings: RollguardSettings,
    svc: ApiSettings,
    board: Board,
    records: Records,
    policy: PolicySource,
    ready: Callable[[], dict[str, bool]],
    metrics: Callable[[], tuple[bytes, str]],
    send: Callable[..., Awaitable[Answer]] = submit,
    alerts: AlertReceiver | None = None,
) -> FastAPI:
    """The API over the given parts; ``ready`` names each part and whether it is ready."""
    app = FastAPI(
        title="rollguard",
        version=_version(),
        description=__doc__,
        responses={
            400: {"model": Problem, "description": "The body is not JSON, or not usable."},
            503: {"model": Problem, "description": "The broker or the ledger does not answer."},
            422: {"description": "The request is not valid (every field named)."},
        },
    )
    verified: list[Any] = [None, 0.0]  # (last Integrity, monotonic time of the check)
    verifying = asyncio.Lock()

    @app.exception_handler(RollguardError)
    async def _rollguard_error(request: Request, exc: RollguardError) -> JSONResponse:
        if isinstance(exc, NotAllowed):
            status = exc.status
        elif isinstance(exc, UsageError):
            status = 400
        else:  # the broker or the ledger is not there: theirs, not the request's
            status = 503
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(KafkaError)
    async def _kafka_error(request: Request, exc: KafkaError) -> JSONResponse:
        return JSONResponse({"detail": f"the broker: {exc!r}"}, status_code=503)

    @app.exception_handler(ValidationError)
    async def _invalid_event(request: Request, exc: ValidationError) -> JSONResponse:
        # An event the request would make that its schema refuses (an id too long...).
        errors = exc.errors(include_url=False)
        said = str(exc).splitlines()[0]
        if errors:
            said = f"{'.'.join(str(p) for p in errors[0]['loc'])}: {errors[0]['msg']}"
        return JSONResponse({"detail": said}, status_code=422)

    def view(status: ModelStatus) -> ModelView:
        mode = status.mode or policy.for_model(status.model_id).rollback.mode
        return ModelView(model_id=status.model_id, mode=mode, health=health(status), status=status)

    @app.get("/api/models", response_model=list[ModelView], tags=["read"])
    async def models() -> list[ModelView]:
        """Every model the decider knows, with its live and known-good versions, lock,
        cooldown, command in flight, verification and pending approvals."""
        return [view(s) for _, s in sorted(board.statuses.items())]

    @app.get(
        "/api/models/{model_id}",
        response_model=ModelView,
        responses={404: {"model": Problem}},
        tags=["read"],
    )
    async def model(model_id: ModelId) -> ModelView:
        status = board.statuses.get(model_id)
        if status is None:
            raise HTTPException(404, f"the decider knows no deployment of {model_id}")
        return view(status)

    @app.get("/api/models/{model_id}/policy", tags=["read"])
    async def model_policy(model_id: ModelId) -> dict[str, Any]:
        """The effective policy of the model: the defaults with its own entries applied."""
        return policy.for_model(model_id).model_dump(mode="json")

    @app.get("/api/approvals", response_model=list[PendingView], tags=["read"])
    async def approvals() -> list[PendingView]:
        """Decisions awaiting approval, oldest deadline first."""
        out = [
            PendingView(model_id=s.model_id, **p.model_dump())
            for s in board.statuses.values()
            for p in s.pending
        ]
        return sorted(out, key=lambda p: p.expires_at)

    @app.get("/api/incidents", response_model=list[IncidentSummary], tags=["read"])
    async def incidents(
        model_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        state: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The newest incidents, newest first; ``state`` keeps those that got that far
        (applied, verified, awaiting_approval, verification_failed...)."""
        found = await asyncio.to_thread(records.incidents, model_id, 10_000 if state else limit)
        if state is not None:
            found = [i for i in found if i["state"] == state]
        return found[:limit]

    @app.get(
        "/api/incidents/{ident}",
        response_model=IncidentDetail,
        responses={404: {"model": Problem}},
        tags=["read"],
    )
    async def incident(ident: EventId) -> dict[str, Any]:
        """One incident, by decision, command or breach id: breach → decision → approvals →
        command → acks → verification, with its figures (MTTD, MTTR...)."""
        found = await asyncio.to_thread(records.incident, ident)
        if found is None:
            raise HTTPException(404, f"no incident {ident!r} in the ledger")
        return found

    async def check(*, within_s: float = VERIFY_EVERY_S) -> Integrity:
        """The ledger verified at most ``within_s`` ago, or REVERIFY_GROWN_S when it has grown
        since (the API checks it in the background too: the metric and the dashboard's badge
        stay current without a reader)."""
        async with verifying:
            age = time.monotonic() - verified[1]
            stale = verified[0] is None or age > within_s
            if not stale and age > REVERIFY_GROWN_S:
                stale = await asyncio.to_thread(records.head) != verified[0].entries
            if stale:
                report = await asyncio.to_thread(records.verify)
                checked = Integrity(**report, checked_at=time.time())
                verified[:] = [checked, time.monotonic()]
                metrics_of.LEDGER_VERIFIED.labels("api").set(1 if checked.ok else 0)
                metrics_of.LEDGER_VERIFIED_AT.labels("api").set(checked.checked_at)
        result: Integrity = verified[0]
        return result

    app.state.check_integrity = check

    @app.get("/api/ledger/integrity", response_model=Integrity, tags=["read"])
    async def integrity() -> Integrity:
        """The ledger's chain and checkpoints, verified at most VERIFY_EVERY_S ago."""
        return await check()

    async def act(
        event: RollbackRequest | Approval, token: str | None, body: Any, wait: Wait
    ) -> JSONResponse:
        signer = person(_bearer(token), body.role, settings.resolved_tokens_file, "the token")
        timeout = min(body.timeout_s, svc.wait_max_s)
        answer = await send(settings, event, signer, wait, timeout)
        doc = AnswerView(sent=event.event_id, lines=answer.lines(), **answer.as_dict())
        return JSONResponse(
            doc.model_dump(mode="json"), status_code=_STATUS_OF.get(answer.outcome(), 200)
        )

    @app.post(
        "/api/models/{model_id}/rollback",
        response_model=AnswerView,
        responses={202: {"model": AnswerView}, **_ACTION_ERRORS},
        tags=["act"],
    )
    async def rollback(
        model_id: ModelId, body: RollbackBody, authorization: Token = None
    ) -> JSONResponse:
        """Ask the decider for a rollback, under the same rules as an automatic one."""
        req = RollbackRequest(
            model_id=model_id,
            to_system_version=body.to_system_version,
            level=body.level,
            role=body.role,
            reason=body.reason,
        )
        return await act(req, authorization, body, body.wait)

    def operating(action: str, body_type: type[OperateBody], doc: str) -> None:
        """``POST /api/models/{model_id}/<action>``: a person's request that the decider
        answers at once (no command to wait for)."""

        async def endpoint(
            model_id: str, body: OperateBody, authorization: str | None = None
        ) -> JSONResponse:
            req = RollbackRequest(
                model_id=model_id,
                action="set_mode" if action == "mode" else action,
                mode=getattr(body, "mode", None),
                role=body.role,
                reason=body.reason,
            )
            return await act(req, authorization, body, "decided")

        # Real types, not the strings of this module's postponed annotations: FastAPI reads
        # them to know the path parameter, the body and the header.
        endpoint.__annotations__ = {
            "model_id": ModelId,
            "body": body_type,
            "authorization": Token,
            "return": JSONResponse,
        }
        endpoint.__doc__ = doc
        endpoint.__name__ = action
        app.post(
            f"/api/models/{{model_id}}/{action}",
            response_model=AnswerView,
            responses=_ACTION_ERRORS,
            tags=["act"],
        )(endpoint)

    operating(
        "unlock", OperateBody, "Lift a verification-failure lock (who and why go to the ledger)."
    )
    operating(
        "pause",
        OperateBody,
        "Stop automatic action on the model until resumed (breaches are still recorded).",
    )
    operating("resume", OperateBody, "Restart automatic action on a paused model.")
    operating(
        "mode", ModeBody, "Switch the model's mode (enforce, recommend, observe) from now on."
    )

    @app.post(
        "/api/approvals/{decision_id}",
        response_model=AnswerView,
        responses={202: {"model": AnswerView}, 404: {"model": Problem}, **_ACTION_ERRORS},
        tags=["act"],
    )
    async def approve(
        decision_id: EventId, body: ApproveBody, authorization: Token = None
    ) -> JSONResponse:
        """Approve a decision awaiting approval; the decider checks the role and the count."""
        person(_bearer(authorization), body.role, settings.resolved_tokens_file, "the token")
        model_id = body.model_id or _pending_model(board, decision_id)
        if model_id is None:
            model_id = await decision_model(settings, decision_id)
        if model_id is None:
            raise HTTPException(404, f"no decision {decision_id} awaiting approval")
        approval = Approval(
            model_id=model_id, decision_id=decision_id, role=body.role, comment=body.comment
        )
        return await act(approval, authorization, body, body.wait)

    @app.post(
        "/api/alerts/alertmanager",
        response_model=AlertsAnswer,
        responses={
            401: {"model": Problem, "description": "No secret, or not the receiver's."},
            403: {"model": Problem, "description": "The receiver is off (no secret set)."},
            413: {"model": Problem, "description": "A body over 1 MiB."},
            503: {"model": Problem, "description": "Not caught up yet, or the broker away."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _inlined(WebhookPayload.model_json_schema())}
                },
            }
        },
        tags=["alerts"],
    )
    async def alertmanager(request: Request, authorization: ReceiverToken = None) -> Any:
        """Alertmanager's webhook (payload version 4): each alert about a model (its
        ``model_id`` label) is recorded, and a firing one whose name the model's policy maps
        (``alerts.<alertname>``) becomes a breach of that tier; a repeated notification is
        answered without acting again (docs/integrations.md). The secret is checked before
        the body is read."""
        if alerts is None:
            raise HTTPException(
                403,
                "the Alertmanager receiver is off: set ROLLGUARD_API_ALERTMANAGER_TOKEN_FILE",
            )
        if not alerts.authentic(_bearer(authorization, "the receiver's secret")):
            raise NotAllowed("Authorization must be 'Bearer <the receiver's secret>'", 401)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ALERTS_BODY:
                raise HTTPException(413, f"the body is over {MAX_ALERTS_BODY} bytes")
        if not board.caught_up.is_set():  # an empty board would call every model unknown
            raise HTTPException(503, "the API has not read the models' status yet; try again")
        # not a version 4 body: 422 with the field, as for any event (_invalid_event)
        payload = WebhookPayload.model_validate_json(bytes(body))
        return await alerts.take(payload, utcnow())

    @app.get("/healthz", tags=["probes"], responses={200: {"model": Problem}})
    async def healthz() -> dict[str, str]:
        """Alive: the process answers (a liveness probe)."""
        return {"detail": "alive"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": Problem}})
    async def readyz() -> JSONResponse:
        """Ready: every service of this process is connected and caught up."""
        parts = ready()
        waiting = sorted(name for name, ok in parts.items() if not ok)
        if waiting:
            return JSONResponse({"detail": f"not ready: {', '.join(waiting)}"}, status_code=503)
        return JSONResponse({"detail": "ready", "services": sorted(parts)})

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics of this process (docs/metrics.md)."""
        body, content_type = metrics()
        return Response(body, media_type=content_type)

    @app.get("/api/dashboard", tags=["read"])
    async def dashboard_settings() -> dict[str, Any]:
        """What the dashboard needs to know of this API."""
        return {"refresh_s": svc.refresh_s, "now": utcnow().isoformat()}

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html")

    @app.get("/incidents/{ident}", include_in_schema=False)
    async def incident_page(ident: str) -> FileResponse:  # the notifier's links land here
        return FileResponse(DASHBOARD / "index.html")

    return app


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` put where they are referred to: a request body declared
    by hand (read after the secret is checked) has no place of its own for them."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


def _bearer(header: str | None, what: str = "role token") -> str | None:
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAllowed(f"Authorization must be 'Bearer <{what}>'", 401)
    return token.strip()


def _pending_model(board: Board, decision_id: str) -> str | None:
    for status in board.statuses.values():
        if any(p.decision_id == decision_id for p in status.pending):
            return status.model_id
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rollguard")
    except PackageNotFoundError:
        return "0"


def openapi_spec() -> bytes:
    """The API's OpenAPI document as checked in (schemas/openapi/rollguard-api.json): what
    `rollguard schemas export` writes and schemathesis fuzzes the running API from."""
    import orjson

    settings = RollguardSettings()
    app = build(
        settings,
        ApiSettings(),
        Board(settings, Trust({})),
        cast(Records, None),
        cast(PolicySource, None),
        dict,
        lambda: (b"", ""),
    )
    spec = app.openapi()
    spec["info"]["version"] = "1"  # the contract's version, not the package's
    return orjson.dumps(spec, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
