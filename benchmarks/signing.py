"""What signing costs (issue 13): Ed25519 over the canonical bytes of each control event type.

Per type, over repeated trials: signing (``Signer.sign``: canonical bytes + Ed25519), what a
consumer does to an event it receives (``decode`` + ``Trust.check``) against ``decode`` alone
(the same run's baseline), p50 and p99 in µs; and the cost on a rollback's path, from the
count of events signed and checked between a breach and the ``verified`` ack.

    python -m benchmarks.signing
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import write
from rollguard import events as ev
from rollguard.signing import ROLES, generate_keypair, load_signer, load_trust

TRIALS = 3000


def _manifest(version: str, status: str, model_id: str = "m") -> ev.SystemManifest:
    return ev.SystemManifest(
        model_id=model_id,
        model_version=version,
        system_version=f"sys-{version}",
        components=ev.Components(model=version, feature_pipeline="fp", config="c", infra="i"),
        status=status,  # type: ignore[arg-type]
    )


def samples() -> dict[str, ev.Signed]:
    now = ev.utcnow()
    good, bad = _manifest("v1", "known_good"), _manifest("v2", "live")
    return {
        "SystemManifest": bad,
        "Breach": ev.Breach(
            model_id="m",
            model_version="v2",
            detector="error_rate",
            kind="error_rate",
            signal="error_rate",
            statistic="wilson_lower",
            value=0.17,
            threshold=0.05,
            window_start=now - timedelta(seconds=1),
            window_end=now,
            n=200,
            tier="immediate",
            evidence={"errors": 40, "rate": 0.2},
        ),
        "Decision": ev.Decision(
            model_id="m",
            model_version="v2",
            action="rollback",
            level=1,
            reasons=[ev.Reason(code="breach", detail="error_rate wilson_lower=0.17 > 0.05")],
            breach_ids=[ev.new_id()],
            metrics={"mttd_s": 1.2, "time_to_decision_s": 0.01},
        ),
        "RollbackCommand": ev.RollbackCommand(
            model_id="m",
            model_version="v2",
            command_id=ev.new_id(),
            decision_id=ev.new_id(),
            from_manifest=bad,
            to_manifest=good,
            level=1,
            issued_at=now,
            expires_at=now + timedelta(seconds=60),
            nonce=ev.new_id(),
        ),
        "CommandAck": ev.CommandAck(
            model_id="m",
            model_version="v2",
            command_id=ev.new_id(),
            status="applied",
            executor_id="executor@host",
            timings={"apply_s": 0.01},
        ),
        "OutputInvalidation": ev.OutputInvalidation(
            model_id="m",
            model_version="v2",
            bad_versions=["v2"],
            valid_from=now - timedelta(seconds=5),
            valid_to=now,
            command_id=ev.new_id(),
        ),
    }


def _us(fn: Callable[[], Any]) -> list[float]:
    out = []
    for _ in range(TRIALS):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _p(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for role in ROLES:
            generate_keypair(root / f"{role}.pem", root / "trusted" / role)
        signer = {role: load_signer(root / f"{role}.pem", role) for role in ROLES}
        trust = load_trust(root / "trusted")
    role_of = {
        "SystemManifest": "deployer",
        "Breach": "detector",
        "Decision": "decider",
        "RollbackCommand": "decider",
        "CommandAck": "executor",
        "OutputInvalidation": "executor",
    }
    per_type: dict[str, Any] = {}
    for name, event in samples().items():
        key = signer[role_of[name]]  # type: ignore[index]
        signed = key.sign(event)
        raw = signed.encode()
        cls = type(event)
        assert trust.check(ev.decode(cls, raw)).ok
        sign = _us(lambda e=event, k=key: k.sign(e))  # type: ignore[misc]
        decode = _us(lambda c=cls, r=raw: ev.decode(c, r))  # type: ignore[misc]
        check = _us(lambda c=cls, r=raw: trust.check(ev.decode(c, r)))  # type: ignore[misc]
        per_type[name] = {
            "bytes": len(raw),
            "sign": _p(sign),
            "decode": _p(decode),
            "decode_and_verify": _p(check),
            "verify_over_decode": round(statistics.median(check) / statistics.median(decode), 1),
        }
    # A rollback's path, breach → verified: events signed (breach, decision, command, acks
    # received/applied/verified, two pointer manifests, an invalidation, model status x2) and
    # the checks of them by the services that read them (decider, notifier, executor,
    # detector, router; the ledger checks when read, not on the path).
    signed_n, checked_n = 11, 16
    sign_p50 = statistics.median(per_type[t]["sign"]["p50_us"] for t in per_type)
    check_p50 = statistics.median(
        per_type[t]["decode_and_verify"]["p50_us"] - per_type[t]["decode"]["p50_us"]
        for t in per_type
    )
    path_ms = round((signed_n * sign_p50 + checked_n * check_p50) / 1000, 2)
    result = {
        "trials": TRIALS,
        "per_type": per_type,
        "rollback_path": {
            "events_signed": signed_n,
            "checks": checked_n,
            "added_ms_p50": path_ms,
        },
    }
    write("signing", result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = ["signing (µs, p50/p99; decode alone is the same run's baseline):"]
    for name, r in result["per_type"].items():
        lines.append(
            f"  {name:<19} {r['bytes']:>5} B  sign {r['sign']['p50_us']}/{r['sign']['p99_us']}  "
            f"decode {r['decode']['p50_us']}/{r['decode']['p99_us']}  decode+verify "
            f"{r['decode_and_verify']['p50_us']}/{r['decode_and_verify']['p99_us']} "
            f"({r['verify_over_decode']}x decode)"
        )
    path = result["rollback_path"]
    lines.append(
        f"  a rollback's path: {path['events_signed']} events signed, {path['checks']} checks: "
        f"{path['added_ms_p50']} ms added (p50)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
