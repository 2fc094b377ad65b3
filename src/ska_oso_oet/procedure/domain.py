"""Domain entities of the script execution domain: scripts, states, processes and the
messages between them.

The classes live in small modules of their own (:mod:`.states` holds the state machine,
:mod:`.worker` the child process, :mod:`.supervisor` the process owner, :mod:`.manager` the
ProcessManager); this module is their public home.
"""

from ska_oso_oet.procedure.manager import ProcessManager
from ska_oso_oet.procedure.scripts import (
    ExecutableScript,
    FileSystemScript,
    GitScript,
    ModuleFactory,
    ProcedureInput,
)
from ska_oso_oet.procedure.states import ProcedureState
from ska_oso_oet.procedure.worker import (
    LifecycleMessage,
    RunThreadState,
    ScriptWorker,
    StopScript,
    script_signal_handler,
)

__all__ = [
    "ExecutableScript",
    "FileSystemScript",
    "GitScript",
    "LifecycleMessage",
    "ModuleFactory",
    "ProcedureInput",
    "ProcedureState",
    "ProcessManager",
    "RunThreadState",
    "ScriptWorker",
    "StopScript",
    "script_signal_handler",
]
