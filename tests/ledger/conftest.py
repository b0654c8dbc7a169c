"""Prints how many tamper cases ran, per database and kind, at the end of the session."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.ledger.test_tamper import TAMPER_CASES

    if not TAMPER_CASES:
        return
    terminalreporter.section("ledger tamper cases (all detected at the named seq)")
    for (db, kind), count in sorted(TAMPER_CASES.items()):
        terminalreporter.write_line(f"{db:<11} {kind:<45} {count}")
    terminalreporter.write_line(f"{'total':<57} {sum(TAMPER_CASES.values())}")
