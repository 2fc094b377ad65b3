"""ProcessManager: tracks procedures and asks the supervisor to act on them."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from pubsub import pub

from ska_oso_oet.procedure.context import ScriptContext
from ska_oso_oet.procedure.errors import ProcedureStateError, UnknownProcedureError
from ska_oso_oet.procedure.gitmanager import GitSettings
from ska_oso_oet.procedure.scripts import ExecutableScript, ProcedureInput
from ska_oso_oet.procedure.states import ACTIVE_STATES, ProcedureState

#: Topics on which a ProcessManager sends its requests to the supervisor (``main_loop``).
CREATE_TOPIC = "procedure.management.create"
RUN_TOPIC = "procedure.management.run"
STOP_TOPIC = "procedure.management.stop"
#: Topic on which the service announces every state change (msg_src: the procedure ID).
STATECHANGE_TOPIC = "procedure.lifecycle.statechange"


class ProcessManager:
    """ProcessManager tracks and coordinates ScriptWorker processes.

    It keeps the state of each procedure and sends management requests (create, run, stop) as
    pypubsub messages to the supervisor's ``main_loop``, which creates and manages the actual
    ScriptWorker processes. It keeps no history: the ScriptExecutionService does.
    """

    _names = itertools.count(1)

    def __init__(
        self,
        states: dict[int, ProcedureState] | None = None,
        state_lock: threading.RLock | None = None,
        first_id: int = 1,
    ) -> None:
        """Create a new ProcessManager.

        :param states: an external states dictionary, shared with its owner (e.g. the
            ScriptExecutionService), which then keeps it up to date; without one the manager
            keeps its own, following ``procedure.lifecycle.statechange``.
        :param state_lock: the lock that guards ``states``; give it with ``states``.
        """
        self.name = f"process-manager-{next(self._names)}"
        self._owns_states = states is None
        self.states: dict[int, ProcedureState] = {} if states is None else states
        self._lock = state_lock if state_lock is not None else threading.RLock()
        self._ids = itertools.count(first_id)
        self.next_id = first_id
        if self._owns_states:
            pub.subscribe(self._on_statechange, STATECHANGE_TOPIC)

    def _on_statechange(self, msg_src: int, new_state: ProcedureState, **_: Any) -> None:
        with self._lock:
            if msg_src in self.states:
                self.states[msg_src] = new_state

    def create(
        self,
        script: ExecutableScript,
        *,
        init_args: ProcedureInput,
        context: ScriptContext | None = None,
        local_path: str | None = None,
        git_settings: GitSettings | None = None,
    ) -> int:
        """Request creation of a new ScriptWorker process; returns the new procedure's ID at
        once, its state CREATING."""
        with self._lock:
            pid = next(self._ids)
            self.next_id = pid + 1
            self.states[pid] = ProcedureState.CREATING
        pub.sendMessage(
            CREATE_TOPIC,
            msg_src=self.name,
            procedure_id=pid,
            script=script,
            init_args=init_args,
            context=context or ScriptContext(),
            local_path=local_path,
            git_settings=git_settings,
        )
        return pid

    def run(
        self,
        process_id: int,
        *,
        call: str,
        run_args: ProcedureInput,
        force_start: bool = False,
        context: ScriptContext | None = None,
    ) -> None:
        """Request execution of a function in a prepared procedure.

        With ``force_start`` the request is sent even when the procedure is not READY yet:
        the worker runs it as soon as it is (never for a procedure that has ended). This is
        the one place that rule is checked: :class:`~.ProcedureStateError` says why not.
        """
        state = self.get_state(process_id)
        if state is None:
            raise UnknownProcedureError(f"No procedure with ID {process_id}")
        if state.is_final:
            raise ProcedureStateError(
                f"Procedure {process_id} has ended ({state.name}); prepare the script again"
            )
        if state is not ProcedureState.READY and not force_start:
            raise ProcedureStateError(
                f"Procedure {process_id} is {state.name}, not READY; wait for READY or start "
                "it with force_start to run it as soon as it is"
            )
        pub.sendMessage(
            RUN_TOPIC,
            msg_src=self.name,
            procedure_id=process_id,
            fn_name=call,
            run_args=run_args,
            context=context or ScriptContext(),
        )

    def stop(self, process_id: int) -> None:
        """Request termination of a procedure (SIGTERM, then SIGKILL after the grace)."""
        pub.sendMessage(STOP_TOPIC, msg_src=self.name, procedure_id=process_id)

    def get_state(self, pid: int) -> ProcedureState | None:
        """The current state of a procedure, or None if it is not known."""
        with self._lock:
            return self.states.get(pid)

    def has_running(self) -> bool:
        """True if any procedure is RUNNING (or PAUSED: its function has not ended)."""
        with self._lock:
            return any(s in ACTIVE_STATES for s in self.states.values())

    def forget(self, pid: int) -> None:
        """Drop an ended procedure's state (the owner bounds its history)."""
        with self._lock:
            self.states.pop(pid, None)

    def close(self) -> None:
        if self._owns_states:
            pub.unsubscribe(self._on_statechange, STATECHANGE_TOPIC)
