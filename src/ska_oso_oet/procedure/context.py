"""The run-time context handed to script functions that ask for it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScriptContext:
    """ScriptContext holds the current execution context provided to scripts.

    This includes persistent operator overrides and any other runtime context that should be
    available to scripts at start time. A script function receives it when it declares a
    keyword parameter named ``context``.

    :ivar wait_for_qa_ready: the operator's override, as it stood when the function was called
    :ivar procedure_id: the ID of the procedure running the function (the ID that Summarise,
        Stop or Pause take), e.g. to tag the data the script records; 0 only for a context
        made outside a procedure
    """

    wait_for_qa_ready: bool = False
    procedure_id: int = 0
