"""The ledger at fleet rates (issue 15): appends and ``verify`` on SQLite and PostgreSQL.

Each round stores ENTRIES signed control events (breaches, decisions, acks of many models, as
the services encode them) in a fresh ledger, in batches of the ledger service's own
``max_batch`` (what one ``getmany`` hands ``LedgerStore.append``), then verifies the chain;
the same batches are then offered again, the way a redelivery after a restart offers them,
and must add nothing. Median of ROUNDS rounds; PostgreSQL gets a database of its own
(``rollguard_bench_ledger``, dropped after) at ROLLGUARD_TEST_POSTGRES_URL's server, and is
left out, with the reason printed, when that server cannot be reached.

    python -m benchmarks.ledger
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from benchmarks.common import write
from benchmarks.signing import samples
from rollguard import topics
from rollguard.signing import generate_keypair, load_signer
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import Incoming, LedgerStore

ENTRIES = 50_000
ROUNDS = 3
MODELS = 1_000
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Which topic each sample event type lives on.
_TOPIC = {
    "Breach": f"rollguard.{topics.BREACHES.name}",
    "Decision": f"rollguard.{topics.DECISIONS.name}",
    "CommandAck": f"rollguard.{topics.ACKS.name}",
}


def records(n: int, keys: Path) -> list[Incoming]:
    """n signed events of MODELS models, each with its own event id, as the services send them."""
    generate_keypair(keys / "bench.pem", keys / "trusted")
    signer = load_signer(keys / "bench.pem", role="decider")
    kinds = {name: event for name, event in samples().items() if name in _TOPIC}
    names = list(kinds)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        event = kinds[name].model_copy(update={"event_id": f"e{i}", "model_id": f"m{i % MODELS}"})
        out.append(Incoming(_TOPIC[name], i % 6, i // 6, signer.sign(event).encode()))
    return out


def one_round(url: str, entries: list[Incoming], batch: int) -> dict[str, float]:
    store = LedgerStore(url)
    try:
        started = time.perf_counter()
        for i in range(0, len(entries), batch):
            store.append(entries[i : i + batch])
        append_s = time.perf_counter() - started
        started = time.perf_counter()
        again = sum(store.append(entries[i : i + batch]) for i in range(0, len(entries), batch))
        redelivered_s = time.perf_counter() - started
        started = time.perf_counter()
        report = store.verify_chain()
        verify_s = time.perf_counter() - started
    finally:
        store.close()
    if not report.ok or report.entries != len(entries) or again:
        raise AssertionError(f"ledger wrong: {report}, {again} stored twice")
    return {
        "append_per_s": len(entries) / append_s,
        "redelivered_per_s": len(entries) / redelivered_s,
        "verify_per_s": report.entries / verify_s,
    }


@contextmanager
def sqlite_ledger() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{tmp}/ledger.db"


@contextmanager
def postgres_ledger(server: str) -> Iterator[str]:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    name = "rollguard_bench_ledger"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _median(rounds: list[dict[str, float]]) -> dict[str, int]:
    return {k: round(statistics.median(r[k] for r in rounds)) for k in rounds[0]}


def main() -> dict[str, Any]:
    import os

    batch = LedgerSettings().max_batch
    with tempfile.TemporaryDirectory() as keys:
        entries = records(ENTRIES, Path(keys))
    result: dict[str, Any] = {
        "entries": ENTRIES,
        "batch": batch,
        "rounds": ROUNDS,
        "models": MODELS,
    }
    backends: dict[str, Any] = {}
    runs = []
    for _ in range(ROUNDS):
        with sqlite_ledger() as url:
            runs.append(one_round(url, entries, batch))
    backends["sqlite"] = _median(runs)
    server = os.environ.get("ROLLGUARD_TEST_POSTGRES_URL", DEFAULT_PG)
    try:
        runs = []
        for _ in range(ROUNDS):
            with postgres_ledger(server) as url:
                runs.append(one_round(url, entries, batch))
        backends["postgresql"] = _median(runs)
    except sa.exc.OperationalError as exc:
        backends["postgresql"] = {"skipped": f"no PostgreSQL at {server}: {exc.orig}"}
    result["backends"] = backends
    write("ledger", result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"ledger ({result['entries']:,} entries of {result['models']:,} models, batches of "
        f"{result['batch']}, median of {result['rounds']}; targets: append >= 10,000/s, "
        f"verify >= 100,000/s):"
    ]
    for name, r in result["backends"].items():
        if "skipped" in r:
            lines.append(f"  {name}: skipped ({r['skipped']})")
            continue
        lines.append(
            f"  {name}: append {r['append_per_s']:,}/s, redelivered batches {r['redelivered_per_s']:,}/s "
            f"(nothing stored twice), verify {r['verify_per_s']:,}/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
