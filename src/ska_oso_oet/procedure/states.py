"""The procedure state machine: the states and every allowed transition, in one table."""

from __future__ import annotations

import enum


class ProcedureState(enum.Enum):
    """Represents the script execution state."""

    UNKNOWN = enum.auto()
    IDLE = enum.auto()
    CREATING = enum.auto()
    PREP_ENV = enum.auto()
    LOADING = enum.auto()
    INITIALISING = enum.auto()
    READY = enum.auto()
    RUNNING = enum.auto()
    PAUSED = enum.auto()
    COMPLETE = enum.auto()
    STOPPED = enum.auto()
    FAILED = enum.auto()

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


S = ProcedureState

#: States after which nothing else happens: the worker process is gone.
FINAL_STATES = frozenset({S.COMPLETE, S.STOPPED, S.FAILED, S.UNKNOWN})

#: States in which a started function has not ended: they count against MaxRunning.
ACTIVE_STATES = frozenset({S.RUNNING, S.PAUSED})

#: Every normal transition. FAILED, STOPPED and UNKNOWN may follow any non-final state.
TRANSITIONS: dict[ProcedureState, frozenset[ProcedureState]] = {
    S.CREATING: frozenset({S.IDLE}),
    S.IDLE: frozenset({S.PREP_ENV, S.LOADING, S.INITIALISING, S.READY}),
    S.PREP_ENV: frozenset({S.IDLE}),
    S.LOADING: frozenset({S.IDLE}),
    S.INITIALISING: frozenset({S.READY}),
    S.READY: frozenset({S.RUNNING, S.COMPLETE}),
    S.RUNNING: frozenset({S.READY, S.PAUSED}),
    # paused at a checkpoint() of the script: Resume (or the function's end) runs it again
    S.PAUSED: frozenset({S.RUNNING}),
}

_ALWAYS_ALLOWED = frozenset({S.FAILED, S.STOPPED, S.UNKNOWN})


class IllegalTransition(ValueError):
    """A state change that the transition table does not allow."""

    def __init__(self, old: ProcedureState | None, new: ProcedureState) -> None:
        super().__init__(f"{old.name if old else None} -> {new.name} is not allowed")
        self.old, self.new = old, new


def check_transition(old: ProcedureState | None, new: ProcedureState) -> None:
    """Raise :class:`IllegalTransition` unless ``new`` may follow ``old``."""
    if not is_allowed(old, new):
        raise IllegalTransition(old, new)


def is_allowed(old: ProcedureState | None, new: ProcedureState) -> bool:
    """True when ``new`` may follow ``old`` (``None``: the procedure is being created)."""
    if old is None:
        return new is S.CREATING
    if old.is_final:
        return False
    return new in _ALWAYS_ALLOWED or new in TRANSITIONS.get(old, frozenset())
