"""The operator's face of the device: typed attributes a dashboard can show as they are.

``procedureSummaries`` holds every summary as one JSON list, re-sent whole on each change. The
attributes here say the same in Tango's own types, and ``procedureChange`` carries the one
summary that changed, so the cost of an event does not grow with the history:

=======================  ======================  ===============================================
attribute                type                    value
=======================  ======================  ===============================================
procedureChange          DevString               JSON summary of the procedure that changed last
procedureIds             DevLong64 spectrum      every procedure held, ascending
procedureStates          DevString spectrum      their states, by name, in the same order
procedureScripts         DevString spectrum      their script URIs, in the same order
runningProcedureIds      DevLong64 spectrum      procedures RUNNING or PAUSED
lastFailure              DevString               ``"<id> <file>: <Type>: <message>"`` or ``""``
=======================  ======================  ===============================================

:class:`Face` keeps the values; the device updates it from its one event thread, then pushes
``procedureSummaries`` and these, in that order, so that whatever a client reads in a callback
agrees with the event it is handling.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any
from urllib.parse import urlparse

from ska_oso_oet.procedure.application import ProcedureSummary
from ska_oso_oet.procedure.errors import error_line
from ska_oso_oet.procedure.states import ACTIVE_STATES, ProcedureState

#: Each attribute of the face -> the field of :class:`Face` that holds its value, in the order
#: their events are pushed (after procedureSummaries).
FIELDS = {
    "procedureChange": "change",
    "procedureIds": "ids",
    "procedureStates": "states",
    "procedureScripts": "scripts",
    "runningProcedureIds": "running",
    "lastFailure": "last_failure",
}
#: Attributes of the face, in the order their events are pushed.
ATTRIBUTES = tuple(FIELDS)

#: The most entries a spectrum attribute here holds (far above any sensible HistoryLength).
MAX_PROCEDURES = 100_000


def script_file_name(uri: str) -> str:
    """The file name in a script URI: ``file:///a/b/x.py`` gives ``x.py``."""
    parsed = urlparse(uri)
    return posixpath.basename(parsed.path or parsed.netloc) or uri


def failure_line(summary: ProcedureSummary) -> str:
    """``"<id> <script file name>: <ExceptionType>: <message>"`` of a FAILED procedure."""
    reason = error_line(summary.history.stacktrace) or "failed (no error was reported)"
    return f"{summary.id} {script_file_name(summary.script.script_uri)}: {reason}"


def bare_uri_request(request: str) -> str:
    """Prepare's argument as JSON: a bare ``file://`` or ``git://`` URI (no init arguments)
    becomes ``{"script": {"script_type": ..., "script_uri": URI}}``; anything else is as given."""
    text = request.strip()
    for prefix, script_type in (("file://", "filesystem"), ("git://", "git")):
        if text.startswith(prefix):
            return json.dumps({"script": {"script_type": script_type, "script_uri": text}})
    return request


@dataclasses.dataclass
class _Held:
    state: ProcedureState
    script_uri: str


class Face:
    """The values of the typed attributes, kept up to date one summary at a time.

    Only the event thread calls :meth:`update`; attribute reads come from Tango's threads, so
    each value is an immutable snapshot, replaced whole."""

    def __init__(self) -> None:
        self.change = ""
        self.last_failure = ""
        self._held: dict[int, _Held] = {}
        self.ids: tuple[int, ...] = ()
        self.states: tuple[str, ...] = ()
        self.scripts: tuple[str, ...] = ()
        self.running: tuple[int, ...] = ()
        self.paused: tuple[int, ...] = ()  # those of ``running`` that are PAUSED

    def update(self, summary: ProcedureSummary, text: str, held: set[int] | None) -> None:
        """Take in ``summary`` (whose JSON is ``text``); ``held``, when given, is every ID the
        service still holds (the others are forgotten)."""
        self._held[summary.id] = _Held(summary.state, summary.script.script_uri)
        if held is not None:
            for pid in [p for p in self._held if p not in held]:
                del self._held[pid]
        if summary.state is ProcedureState.FAILED:
            self.last_failure = failure_line(summary)
        ids = tuple(sorted(self._held))
        self.states = tuple(self._held[p].state.name for p in ids)
        self.scripts = tuple(self._held[p].script_uri for p in ids)
        self.running = tuple(p for p in ids if self._held[p].state in ACTIVE_STATES)
        self.paused = tuple(p for p in ids if self._held[p].state is ProcedureState.PAUSED)
        self.ids = ids
        self.change = text

    def value(self, name: str) -> Any:
        """The value of attribute ``name`` (one of :data:`ATTRIBUTES`): a spectrum as a list."""
        value = getattr(self, FIELDS[name])
        return list(value) if isinstance(value, tuple) else value
