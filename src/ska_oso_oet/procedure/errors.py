"""Exceptions raised by the procedure service for requests it cannot carry out."""

from __future__ import annotations


class ProcedureError(Exception):
    """A request about a procedure could not be carried out; the message says why."""


class UnknownProcedureError(ProcedureError, LookupError):
    """No procedure has the given ID (or it has left the bounded history)."""


class ProcedureStateError(ProcedureError):
    """The procedure is not in a state that allows the request."""


class InvalidArgumentsError(ProcedureError, ValueError):
    """A Start's arguments do not fit the signature of the function it names."""


class ScriptRejectedError(ProcedureError, ValueError):
    """The script named in a request may not, or cannot, be loaded."""


class RequestLimitError(InvalidArgumentsError):
    """A request is over one of the service's limits; the message names the limit and its
    setting (keyword and device property)."""


def error_line(stacktrace: str | None) -> str | None:
    """The error a stacktrace ends with, its exception named by the bare class name
    (``oet_script_x.ObservationError: refused`` -> ``ObservationError: refused``); None for
    an empty one. What ``lastFailure`` and ``oet listen`` show of a FAILED procedure."""
    lines = [line.strip() for line in (stacktrace or "").splitlines() if line.strip()]
    if not lines:
        return None
    kind, sep, message = lines[-1].partition(": ")
    parts = kind.split(".")
    if all(part.isidentifier() for part in parts):
        return parts[-1] + sep + message
    return lines[-1]
