"""Counts the tamper cases each test ran (a user property, so pytest-xdist carries it) and
prints them per database and kind at the end of the session."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import reported_properties


@pytest.fixture(autouse=True)
def _tamper_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    from tests.ledger.test_tamper import TAMPER_CASES

    before = Counter(TAMPER_CASES)
    yield
    ran = Counter(TAMPER_CASES)
    ran.subtract(before)
    for (db, kind), n in ran.items():
        if n:
            request.node.user_properties.append(("tamper", (db, kind, n)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    cases: Counter[tuple[str, str]] = Counter()
    for _, (db, kind, n) in reported_properties(terminalreporter, "tamper"):
        cases[(db, kind)] += n
    if not cases:
        return
    terminalreporter.section("ledger tamper cases (all detected at the named seq)")
    for (db, kind), count in sorted(cases.items()):
        terminalreporter.write_line(f"{db:<11} {kind:<45} {count}")
    terminalreporter.write_line(f"{'total':<57} {sum(cases.values())}")
