"""The run-time context handed to script functions that ask for it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScriptContext:
    """ScriptContext holds the current execution context provided to scripts.

    This includes persistent operator overrides and any other runtime context that should be
    available to scripts at start time. A script function receives it when it declares a
    keyword parameter named ``context``.
    """

    wait_for_qa_ready: bool = False
