"""The published ModelStatus changes exactly when a field it shows changes (issue 15: the
check no longer builds two statuses for every stored state)."""

from __future__ import annotations

import itertools

from rollguard.signing import Signer
from rollguard_services.decider.status import _visible, model_status, status_change
from tests.decider.test_decisions import T0
from tests.decider.test_decisions import signer as signer
from tests.decider.test_timers import states


def test_a_status_is_published_exactly_when_what_it_shows_changed(signer: Signer) -> None:
    made = states(signer)
    quiet = made["baking"].model_copy(update={"handled_breaches": ("b1",), "taken_facts": ("f1",)})
    pairs = [*itertools.permutations([*made.values(), quiet], 2)]
    pairs += [(s, s) for s in made.values()]
    for before, after in pairs:
        full = _visible(model_status(before, T0)) != _visible(model_status(after, T0))
        change = status_change(before, after, T0)
        assert (change is not None) == full, (before, after)
        if change is not None:
            assert change == model_status(after, T0)
    assert status_change(made["baking"], quiet, T0) is None  # bookkeeping only
