"""The ObservationExecutionTool device server executable."""

from __future__ import annotations

import logging
import sys

from tango.server import run

from ska_oso_oet.procedure.output import SkaLogFormatter
from ska_oso_oet.tango.device import ObservationExecutionTool


def main(args: list[str] | None = None, **kwargs: object) -> int:
    """Run the server: ``ObservationExecutionTool <instance> [Tango options]``."""
    # SKA's log line (UTC time, level, thread, function, file#line, tags, message); a record
    # about a procedure is tagged procedure:<id>
    logging.basicConfig(level=logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(SkaLogFormatter())
    # Hand the interpreter lock over sooner: the threads that carry a state change (the
    # supervisor, the event pusher, Tango's) each hold it only briefly.
    sys.setswitchinterval(0.0005)
    if args is None and len(sys.argv) > 0 and not sys.argv[0].endswith("ObservationExecutionTool"):
        # started as `python -m ska_oso_oet.tango.server 1`: name the server as the executable
        args = ["ObservationExecutionTool", *sys.argv[1:]]
    run((ObservationExecutionTool,), args=args, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
