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
