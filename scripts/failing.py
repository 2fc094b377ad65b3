"""Failing: main raises, so the procedure ends FAILED with this stacktrace.

Try it::

    oet prepare file://$PWD/scripts/failing.py && oet start 1
    oet describe 1        # shows FAILED and the stacktrace
"""


class ObservationError(RuntimeError):
    """What a real script might raise when the telescope refuses."""


def main(*args, **kwargs):
    """Fail on purpose, with a message that says so."""
    raise ObservationError("failing.py fails on purpose: the dish refused to move")
