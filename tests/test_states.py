"""The state machine's table: every allowed transition, and every other one refused."""

from __future__ import annotations

import itertools

import pytest

from ska_oso_oet.procedure.application import PrepareProcessCommand, StartProcessCommand
from ska_oso_oet.procedure.domain import ProcedureInput
from ska_oso_oet.procedure.states import (
    FINAL_STATES,
    IllegalTransition,
    ProcedureState,
    check_transition,
    is_allowed,
)
from tests.helpers import script

S = ProcedureState
ALLOWED = {
    (S.CREATING, S.IDLE),
    (S.IDLE, S.PREP_ENV),
    (S.IDLE, S.LOADING),
    (S.IDLE, S.INITIALISING),
    (S.IDLE, S.READY),
    (S.PREP_ENV, S.IDLE),
    (S.LOADING, S.IDLE),
    (S.INITIALISING, S.READY),
    (S.READY, S.RUNNING),
    (S.READY, S.COMPLETE),
    (S.RUNNING, S.READY),
    (S.RUNNING, S.PAUSED),
    (S.PAUSED, S.RUNNING),
} | {
    (old, new) for old in S if old not in FINAL_STATES for new in (S.FAILED, S.STOPPED, S.UNKNOWN)
}


@pytest.mark.parametrize("old, new", list(itertools.product(S, S)))
def test_exactly_the_table_is_allowed(old, new):
    assert is_allowed(old, new) is ((old, new) in ALLOWED)
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
            check_transition(old, new)


def test_a_procedure_is_born_creating_and_final_states_are_final():
    assert [new for new in S if is_allowed(None, new)] == [S.CREATING]
    for final in FINAL_STATES:
        assert not any(is_allowed(final, new) for new in S)


@pytest.mark.parametrize(
    "sequence",
    [
        "CREATING IDLE LOADING IDLE READY RUNNING READY COMPLETE",
        "CREATING IDLE LOADING IDLE INITIALISING READY RUNNING READY COMPLETE",
        "CREATING IDLE PREP_ENV IDLE LOADING IDLE READY RUNNING STOPPED",
        "CREATING IDLE LOADING FAILED",
        "CREATING IDLE LOADING IDLE READY RUNNING PAUSED RUNNING READY COMPLETE",
        "CREATING IDLE LOADING IDLE READY RUNNING PAUSED RUNNING PAUSED RUNNING READY COMPLETE",
        "CREATING IDLE LOADING IDLE READY RUNNING PAUSED STOPPED",
        "CREATING IDLE LOADING IDLE READY RUNNING PAUSED FAILED",
    ],
)
def test_the_documented_sequences_are_allowed(sequence):
    states = [None, *(S[name] for name in sequence.split())]
    for old, new in itertools.pairwise(states):
        check_transition(old, new)


def test_the_service_refuses_an_illegal_transition_and_lists_it(make_service):
    ses = make_service()
    summary = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, 20)
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    done = ses.wait_for_state(summary.id, [S.COMPLETE, S.FAILED], 20)
    assert done.state is S.COMPLETE
    ses._on_state(summary.id, S.RUNNING, 0.0, None)  # as a confused reporter would
    assert ses.summarise([summary.id])[0].state is S.COMPLETE
    assert ses.summarise([summary.id])[0].history == done.history
    assert ses.illegal_transitions == [(summary.id, S.COMPLETE, S.RUNNING)]
    ses.illegal_transitions.clear()  # seen: the fixture's check is for unexpected ones
