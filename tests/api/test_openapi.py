"""The API's OpenAPI spec: checked in under schemas/ as the code makes it, and the running API
fuzzed from it (schemathesis): no 5xx, every answer as the spec says, every refusal a 4xx
with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis

from rollguard_services.api.routes import openapi_spec
from tests.api.conftest import Up, start_up, stop_up
from tests.conftest import HEAVY, scaled

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "schemas" / "openapi" / "rollguard-api.json"

schema = schemathesis.openapi.from_path(SPEC)

#: The answers of an action whose request was taken but whose outcome is not a success: the
#: rollback it launched failed (502), or no answer came in time (504). Both are documented,
#: carry the decider's answer, and are not server errors; anything else >= 500 is.
ANSWERED_5XX = {502, 504}


@schemathesis.check
def no_server_error(ctx: schemathesis.CheckContext, response: Any, case: schemathesis.Case) -> None:
    if response.status_code >= 500:
        body = response.json() if response.status_code in ANSWERED_5XX else None
        if not (isinstance(body, dict) and body.get("outcome") in ("failed", "timed_out")):
            raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


def test_the_checked_in_spec_is_what_the_code_serves() -> None:
    assert SPEC.read_bytes() == openapi_spec(), "run: rollguard schemas export"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, str]]:
    # An action waits at most 3 s for its answer here: a fuzzed timeout of minutes would
    # only make the run long.
    up = start_up(tmp_path_factory.mktemp("fuzz") / "state", ROLLGUARD_API_WAIT_MAX_S="3")
    try:
        token = up.token("fuzzer", "sre")
        up.deploy("m1", "s1", "v1", "known_good")
        up.deploy("m1", "s2", "v2", "live")
        yield up, token
    finally:
        stop_up(up)


@pytest.mark.broker
@HEAVY
@pytest.mark.timeout(scaled(600))
@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_the_api_answers_every_request_its_spec_allows(
    case: schemathesis.Case, fuzzed: tuple[Up, str]
) -> None:
    up, token = fuzzed
    headers = {"Authorization": f"Bearer {token}"} if case.method == "POST" else None
    case.call_and_validate(
        base_url=up.url,
        headers=headers,
        excluded_checks=[schemathesis.checks.not_a_server_error],
        additional_checks=[no_server_error],
    )
