"""The application layer of the OET: :class:`ScriptExecutionService` and its commands.

The service is the facade of the procedure domain. It records history and argument captures,
enforces the rules that span procedures (how many may run at once, the two-phase abort) and
announces every change, both as pypubsub topics and to listeners registered with
:meth:`ScriptExecutionService.add_listener`.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pubsub import pub

from ska_oso_oet.procedure import messages, output, settings, strictjson
from ska_oso_oet.procedure.callables import check_call
from ska_oso_oet.procedure.context import ScriptContext
from ska_oso_oet.procedure.errors import (
    InvalidArgumentsError,
    ProcedureError,
    ProcedureStateError,
    RequestLimitError,
    ScriptRejectedError,
    UnknownProcedureError,
)
from ska_oso_oet.procedure.gitmanager import GitSettings, check_git_args
from ska_oso_oet.procedure.manager import STATECHANGE_TOPIC, ProcessManager
from ska_oso_oet.procedure.scripts import (
    ExecutableScript,
    FileSystemScript,
    GitScript,
    ProcedureInput,
    is_within,
)
from ska_oso_oet.procedure.states import IllegalTransition, ProcedureState, check_transition
from ska_oso_oet.procedure.supervisor import ManagementListener, Supervisor

__all__ = [
    "AbortSummary",
    "ArgCapture",
    "InvalidArgumentsError",
    "PrepareProcessCommand",
    "ProcedureError",
    "ProcedureHistory",
    "ProcedureStateError",
    "ProcedureSummary",
    "RequestLimitError",
    "ScriptContext",
    "ScriptExecutionService",
    "ScriptRejectedError",
    "StartProcessCommand",
    "StopProcessCommand",
    "UnknownProcedureError",
]

LOGGER = logging.getLogger(__name__)

WAIT_FOR_QA_READY_ENABLE = "operator.wait_for_qa_ready.enable"
WAIT_FOR_QA_READY_DISABLE = "operator.wait_for_qa_ready.disable"


@dataclasses.dataclass
class PrepareProcessCommand:
    """Input of :meth:`ScriptExecutionService.prepare`: the script and its ``init``
    arguments."""

    script: ExecutableScript
    init_args: ProcedureInput = dataclasses.field(default_factory=ProcedureInput)


@dataclasses.dataclass
class StartProcessCommand:
    """Input of :meth:`ScriptExecutionService.start`: which procedure, which function, with
    which late-binding arguments."""

    process_uid: int
    fn_name: str = "main"
    run_args: ProcedureInput = dataclasses.field(default_factory=ProcedureInput)
    force_start: bool = False


@dataclasses.dataclass
class StopProcessCommand:
    """Input of :meth:`ScriptExecutionService.stop`."""

    process_uid: int
    run_abort: bool = False


@dataclasses.dataclass
class ArgCapture:
    """ArgCapture is a struct to record function call and time of invocation."""

    fn: str
    fn_args: ProcedureInput
    time: float | None = None


@dataclasses.dataclass
class ProcedureHistory:
    """Execution history of a procedure: each state with the time it was entered, and the
    stacktrace of a failure (else None)."""

    process_states: list[tuple[ProcedureState, float]] = dataclasses.field(default_factory=list)
    stacktrace: str | None = None


@dataclasses.dataclass
class ProcedureSummary:
    """ProcedureSummary is a brief representation of a runtime Procedure."""

    id: int
    script: ExecutableScript
    script_args: list[ArgCapture]
    history: ProcedureHistory
    state: ProcedureState
    uri: str | None = None
    #: the script's last report_progress(): {"fraction": .., "message": .., "time": ..}
    progress: dict[str, Any] | None = None
    #: what the last started function returned (messages.bound_result), None until then
    result: Any = None
    #: a Pause was asked for and the script has not reached a checkpoint() yet
    pause_pending: bool = False


@dataclasses.dataclass
class AbortSummary:
    """What a two-phase stop did: the procedure stopped and the abort procedure started for
    it (None when no abort was asked for)."""

    stopped_id: int
    abort: ProcedureSummary | None = None


@dataclasses.dataclass
class _Record:
    script: ExecutableScript
    history: ProcedureHistory
    script_args: list[ArgCapture]
    callables: dict[str, Any] | None = None  # at READY: name -> signature spec (or None)
    claims_run: bool = False  # a start was accepted and its function has not ended
    progress: dict[str, Any] | None = None
    result: Any = None
    pause_pending: bool = False


Listener = Callable[[ProcedureSummary], None]


class ScriptExecutionService:
    """ScriptExecutionService provides the high-level interface and facade for the script
    execution domain (i.e., the 'procedure' domain).

    It loads and runs Python scripts, each in its own child process. It is ready as soon as it
    is constructed; :meth:`shutdown` (or leaving it as a context manager) ends every process it
    started.
    """

    def __init__(
        self,
        abort_script: ExecutableScript | None = None,
        *,
        stop_grace: float = settings.default("stop_grace"),
        history_limit: int = settings.default("history_limit"),
        max_running: int = settings.default("max_running"),
        script_roots: Iterable[str] | None = None,
        spare_workers: int = settings.default("spare_workers"),
        preload_modules: Iterable[str] = (),
        allowed_git_repos: Iterable[str] = (),
        git_cache_dir: str | None = None,
        git_timeout: float = settings.default("git_timeout"),
        install_timeout: float = settings.default("install_timeout"),
        installer: str = settings.INSTALLER,
        max_environments: int = settings.default("max_environments"),
        data_dir: str | None = None,
        output_limit: int = settings.default("output_limit"),
        max_request_size: int = settings.default("max_request_size"),
        max_argument_size: int = settings.default("max_argument_size"),
        max_summarise_ids: int = settings.default("max_summarise_ids"),
        max_procedures: int = settings.default("max_procedures"),
        first_id: int = 1,
        restored: Iterable[ProcedureSummary] = (),
    ) -> None:
        """Create a new ScriptExecutionService. The settings, their defaults and their
        device properties are listed once, in :mod:`.settings`.

        :param abort_script: post-termination script for two-phase abort (``stop`` with
            ``run_abort``); it is called with the stopped procedure's ``subarray_id``
        :param stop_grace: seconds a script has to end after SIGTERM before its whole process
            group is killed
        :param history_limit: how many ended procedures are kept (live ones always are)
        :param max_running: how many procedures may be RUNNING at once
        :param script_roots: directories that ``file://`` scripts must lie in, once symlinks
            are resolved; None allows any file
        :param spare_workers: worker processes kept started and idle, so that a prepare does
            not wait for a process to start
        :param preload_modules: modules imported once, before any worker is forked, so that
            a script importing them does not pay for it (e.g. numpy); missing ones are
            skipped
        :param allowed_git_repos: shell-style patterns that a git script's repository URL
            must match (none: git scripts are refused)
        :param git_cache_dir: where clones and environments are kept (default
            ``$OET_CACHE_DIR`` or ``~/.cache/ska-oso-oet``)
        :param git_timeout: seconds a git command may take (an unreachable repository fails
            within about this time)
        :param install_timeout: seconds an environment's installation may take
        :param installer: "uv", "pip" or "auto" (uv when it is installed)
        :param max_environments: environments kept on disk; the least recently used beyond
            this are deleted when not in use
        :param data_dir: where the output of procedures is kept (None: a temporary
            directory, deleted at shutdown)
        :param output_limit: bytes of output kept per procedure; the oldest lines beyond are
            dropped and counted
        :param max_request_size: bytes a request may have (the service holds it for its
            faces: the Tango device and the REST API refuse larger requests)
        :param max_argument_size: bytes of JSON the arguments of one call (init or a started
            function) may have; larger ones are refused (:class:`RequestLimitError`)
        :param max_summarise_ids: distinct IDs one :meth:`summarise` may ask for
        :param max_procedures: procedures not yet ended that may be held at once (each has
            a process); a prepare beyond is refused (an abort procedure never is)
        :param first_id: the ID of the first procedure (a service that replaces another
            continues its numbering, so that clients never see an ID twice)
        :param restored: ended procedures to hold again, as an earlier service left them
            (the device's durable history); IDs go on above theirs
        """
        if installer not in settings.INSTALLERS:
            raise ValueError("installer must be 'auto', 'uv' or 'pip'")
        if stop_grace < 0 or history_limit < 0 or max_running < 1 or spare_workers < 0:
            raise ValueError(
                "stop_grace and history_limit must be >= 0, max_running >= 1, spare_workers >= 0"
            )
        if min(max_request_size, max_argument_size, max_summarise_ids, max_procedures) < 1:
            raise ValueError(
                "max_request_size, max_argument_size, max_summarise_ids and max_procedures "
                "must be >= 1"
            )
        self.max_procedures = max_procedures
        self.max_request_size = max_request_size
        self.max_argument_size = max_argument_size
        self.max_summarise_ids = max_summarise_ids
        self.abort_script = abort_script
        self.history_limit = history_limit
        self.max_running = max_running
        self.script_roots = (
            None if script_roots is None else [os.path.realpath(r) for r in script_roots]
        )
        self.allowed_git_repos = list(allowed_git_repos)
        self.git_settings = GitSettings(
            cache_dir=settings.cache_dir(git_cache_dir),
            git_timeout=git_timeout,
            install_timeout=install_timeout,
            installer=installer,
            max_environments=max_environments,
        )
        #: Transitions reported for a procedure that the state table refused: (id, old, new).
        self.illegal_transitions: list[tuple[int, ProcedureState | None, ProcedureState]] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._states: dict[int, ProcedureState] = {}
        self._records: dict[int, _Record] = {}
        self._ended: deque[int] = deque()
        self._abort_after: dict[int, int] = {}
        self._listeners: list[Listener] = []
        # (id, new state or None when only the summary changed, summary)
        self._outbox: deque[tuple[int, ProcedureState | None, ProcedureSummary]] = deque()
        self._dispatch_lock = threading.RLock()
        self._wait_for_qa_ready = False
        self._closed = False
        self._output = output.open_hub(data_dir, output_limit)
        restored = sorted(restored, key=lambda s: s.id)
        for summary in restored:
            if not summary.state.is_final:
                raise ValueError(f"restored procedure {summary.id} is {summary.state.name}")
            self._records[summary.id] = _Record(
                script=summary.script,
                history=ProcedureHistory(
                    list(summary.history.process_states), summary.history.stacktrace
                ),
                script_args=list(summary.script_args),
                progress=summary.progress,
                result=summary.result,
            )
            self._states[summary.id] = summary.state
            self._ended.append(summary.id)
        if restored:
            first_id = max(first_id, restored[-1].id + 1)
        self._manager = ProcessManager(
            states=self._states, state_lock=self._lock, first_id=first_id
        )
        self._trim_history()
        self._supervisor = Supervisor(
            self._on_state,
            self._on_pubsub,
            stop_grace=stop_grace,
            spare_workers=spare_workers,
            preload_modules=preload_modules,
            on_update=self._on_update,
            on_output=self._output,
            on_failure=self._on_supervisor_failure,
        )
        self._failure_listeners: list[Callable[[str], None]] = []
        self._management = ManagementListener(self._supervisor, self._manager.name)
        pub.subscribe(self.handle_wait_for_qa_ready_enable, WAIT_FOR_QA_READY_ENABLE)
        pub.subscribe(self.handle_wait_for_qa_ready_disable, WAIT_FOR_QA_READY_DISABLE)
        self._supervisor.start()
        ref = weakref.ref(self)

        def shutdown_at_exit() -> None:
            service = ref()
            if service is not None:
                service.shutdown()

        self._atexit = shutdown_at_exit
        atexit.register(shutdown_at_exit)

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> ScriptExecutionService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- settings --------------------------------------------------------------------------

    @property
    def stop_grace(self) -> float:
        return self._supervisor.stop_grace

    @property
    def wait_for_qa_ready(self) -> bool:
        return self._wait_for_qa_ready

    @property
    def healthy(self) -> bool:
        """True while the service is open and its process supervisor is alive and sound
        (not once it has failed, even while its thread is still ending)."""
        return not self._closed and self._supervisor.running and self._supervisor.failure is None

    @property
    def failure(self) -> str | None:
        """Why the service can do nothing more (its process supervisor died: ``"Type:
        message"``), else None. Every procedure it held was ended and shown FAILED."""
        return self._supervisor.failure

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(failure)`` once, if the process supervisor dies."""
        self._failure_listeners.append(listener)

    # -- operations, and what they did -----------------------------------------------------

    def prepare(self, cmd: PrepareProcessCommand) -> ProcedureSummary:
        """Load and prepare a Python script for execution, but do not commence execution.

        Returns at once with the procedure CREATING; loading goes on in its worker process.
        """
        if not isinstance(cmd.init_args, ProcedureInput):
            raise ProcedureError("init_args must be a ProcedureInput")
        self._check_size("init", cmd.init_args)
        local_path = self._check_script(cmd.script)
        return self._prepare(cmd, local_path, bounded=True)

    def _prepare(
        self, cmd: PrepareProcessCommand, local_path: str | None, bounded: bool = False
    ) -> ProcedureSummary:
        with self._lock:
            self._check_open()
            live = sum(1 for state in self._states.values() if not state.is_final)
            if bounded and live >= self.max_procedures:  # an abort script is never refused
                raise ProcedureError(
                    f"{live} procedures have not ended, the most allowed (device property "
                    "MaxProcedures): stop one, or start and let it end, then prepare again"
                )
            now = time.time()  # before the worker can report IDLE
            pid = self._manager.create(
                cmd.script,
                init_args=cmd.init_args,
                context=self._context(),
                local_path=local_path,
                git_settings=self.git_settings if isinstance(cmd.script, GitScript) else None,
            )
            self._records[pid] = _Record(
                script=cmd.script,
                history=ProcedureHistory([(ProcedureState.CREATING, now)]),
                script_args=[ArgCapture("init", cmd.init_args, now)],
            )
            summary = self._summary(pid)
            self._outbox.append((pid, ProcedureState.CREATING, summary))
        LOGGER.info("Procedure %s: preparing %s", pid, cmd.script.script_uri)
        self._dispatch()
        return summary

    def start(self, cmd: StartProcessCommand) -> ProcedureSummary:
        """Start execution of a prepared procedure.

        With ``force_start`` a procedure that is still being prepared runs the function as
        soon as it is READY.
        """
        return self._start(cmd, respect_limit=True)

    def _start(self, cmd: StartProcessCommand, respect_limit: bool) -> ProcedureSummary:
        pid, fn_name = cmd.process_uid, cmd.fn_name
        if not isinstance(cmd.run_args, ProcedureInput):
            raise ProcedureError("run_args must be a ProcedureInput")
        self._check_size(str(fn_name)[:80], cmd.run_args)
        if not isinstance(fn_name, str) or not fn_name.isidentifier() or fn_name[0] == "_":
            raise ProcedureError(f"{fn_name!r} is not the name of a public script function")
        with self._lock:
            self._check_open()
            rec = self._record(pid)
            if rec.claims_run or self._states[pid] is ProcedureState.RUNNING:
                raise ProcedureStateError(f"Procedure {pid} is already running a function")
            if rec.callables is not None and fn_name not in rec.callables:
                have = ", ".join(sorted(rec.callables)) or "none"
                raise ProcedureError(
                    f"The script of procedure {pid} has no function {fn_name!r} "
                    f"(its functions: {have})"
                )
            spec = rec.callables.get(fn_name) if rec.callables is not None else None
            if spec is not None:
                try:
                    check_call(spec, cmd.run_args.args, cmd.run_args.kwargs)
                except TypeError as exc:
                    raise InvalidArgumentsError(
                        f"{fn_name}{spec['text']} of procedure {pid} cannot be called with "
                        f"these arguments: {exc}; the procedure is still READY"
                    ) from None
            running = [p for p, r in self._records.items() if r.claims_run]
            if respect_limit and len(running) >= self.max_running:
                raise ProcedureStateError(
                    f"Procedure {running[0]} is running and at most {self.max_running} may "
                    "run at once; wait for it to end or stop it"
                )
            now = time.time()
            self._manager.run(  # refuses a procedure that has ended or is not READY
                pid,
                call=fn_name,
                run_args=cmd.run_args,
                force_start=cmd.force_start,
                context=self._context(),
            )
            rec.claims_run = True
            rec.result = None  # until this function returns
            rec.script_args.append(ArgCapture(fn_name, cmd.run_args, now))
            LOGGER.info("Procedure %s: starting %s", pid, fn_name)
            return self._summary(pid)

    def stop(self, cmd: StopProcessCommand) -> list[ProcedureSummary]:
        """Stop a procedure: SIGTERM raises inside the script; if it is still alive after the
        grace period its whole process group is killed. Returns at once.

        With ``run_abort`` the abort script is prepared now and started as soon as the stopped
        procedure's process is gone; its summary is returned.
        """
        pid = cmd.process_uid
        with self._lock:
            self._check_open()
            self._record(pid)
            state = self._states[pid]
            if state.is_final:
                raise ProcedureStateError(f"Procedure {pid} has already ended ({state.name})")
            if cmd.run_abort and self.abort_script is None:
                raise ProcedureError(
                    "No abort script is configured, so run_abort cannot be honoured; "
                    "nothing was stopped"
                )
            LOGGER.info("Procedure %s: stopping (run_abort=%s)", pid, cmd.run_abort)
            self._manager.stop(pid)
            if not cmd.run_abort or pid in self._abort_after:
                return []
            assert self.abort_script is not None
            subarray_id = self._subarray_id(pid)
            abort_args = (
                ProcedureInput()
                if subarray_id is None
                else ProcedureInput(subarray_id=subarray_id)
            )
            try:
                abort = self._prepare(PrepareProcessCommand(self.abort_script, abort_args), None)
            except ProcedureError as exc:
                raise ProcedureError(
                    f"Procedure {pid} is being stopped, but its abort script could not be "
                    f"prepared: {exc}"
                ) from exc
            self._abort_after[pid] = abort.id
            return [abort]

    def pause(self, pid: int) -> ProcedureSummary:
        """Ask a RUNNING procedure to pause: it becomes PAUSED when its script next calls
        ``ska_oso_oet.scripting.checkpoint()``, and stays there until :meth:`resume` or
        :meth:`stop`. Until then the summary shows ``pause_pending``. A script that never
        calls checkpoint() runs on to its end. Returns at once."""
        with self._lock:
            self._check_open()
            rec = self._record(pid)
            state = self._states[pid]
            if state is ProcedureState.PAUSED:
                raise ProcedureStateError(f"Procedure {pid} is already PAUSED; Resume it to go on")
            if state is not ProcedureState.RUNNING:
                raise ProcedureStateError(
                    f"Procedure {pid} is {state.name}, not RUNNING: only a running procedure "
                    "can be paused (it pauses at its next checkpoint())"
                )
            if not rec.pause_pending:
                rec.pause_pending = True
                LOGGER.info("Procedure %s: pause requested", pid)
                self._supervisor.control(pid, messages.Pause())
                self._outbox.append((pid, None, self._summary(pid)))
            summary = self._summary(pid)
        self._dispatch()
        return summary

    def resume(self, pid: int) -> ProcedureSummary:
        """Let a PAUSED procedure go on (RUNNING again), or cancel a pause that is still
        pending. Returns at once."""
        with self._lock:
            self._check_open()
            rec = self._record(pid)
            state = self._states[pid]
            if state is not ProcedureState.PAUSED and not rec.pause_pending:
                hint = (
                    "; no pause is pending either (a Pause takes effect at the script's next "
                    "checkpoint())"
                    if state is ProcedureState.RUNNING
                    else ""
                )
                raise ProcedureStateError(
                    f"Procedure {pid} is {state.name}, not PAUSED{hint}: there is nothing to "
                    "resume"
                )
            LOGGER.info("Procedure %s: resuming", pid)
            self._supervisor.control(pid, messages.Resume())
            if rec.pause_pending:
                rec.pause_pending = False
                self._outbox.append((pid, None, self._summary(pid)))
            summary = self._summary(pid)
        self._dispatch()
        return summary

    def summarise(self, pids: list[int] | None = None) -> list[ProcedureSummary]:
        """ProcedureSummary objects for the requested procedure IDs, or for all of them.

        An ID asked for twice is answered once; more than ``max_summarise_ids`` distinct IDs
        are refused (:class:`RequestLimitError`)."""
        if pids is not None:
            pids = list(dict.fromkeys(pids))
            if len(pids) > self.max_summarise_ids:
                raise RequestLimitError(
                    f"{len(pids)} distinct procedure IDs asked for, more than the limit of "
                    f"{self.max_summarise_ids} (device property MaxSummariseIds); ask for "
                    "fewer, or for every procedure with an empty list"
                )
        with self._lock:
            if pids is None:
                return [self._summary(p) for p in self._records]
            unknown = [p for p in pids if p not in self._records]
            if unknown:
                named = ", ".join(str(p)[:40] for p in unknown[:10])  # a bounded reply
                more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
                raise UnknownProcedureError(f"No procedure with ID {named}{more}")
            return [self._summary(p) for p in pids]

    def get_output(self, pid: int, since: int = 0) -> dict[str, Any]:
        """A page of procedure ``pid``'s kept output: ``{"id", "lines", "next",
        "dropped"}`` with the lines whose ``seq`` >= ``since`` (ask again from ``next``)."""
        with self._lock:
            self._record(pid)
        return self._output.get_output(pid, since)

    def add_output_listener(self, listener: output.OutputListener) -> None:
        """Call ``listener`` with each output batch and script message (see :mod:`.output`),
        in order per procedure; it must not block."""
        self._output.add_listener(listener)

    def remove_output_listener(self, listener: output.OutputListener) -> None:
        self._output.remove_listener(listener)

    def procedure_ids(self) -> list[int]:
        """IDs of every procedure the service holds, oldest first."""
        with self._lock:
            return list(self._records)

    # -- operator overrides ---------------------------------------------------------------

    def handle_wait_for_qa_ready_enable(self, msg_src: Any = None, **_: Any) -> None:
        """Handler for operator.wait_for_qa_ready.enable: sets wait_for_qa_ready."""
        self._wait_for_qa_ready = True

    def handle_wait_for_qa_ready_disable(self, msg_src: Any = None, **_: Any) -> None:
        """Handler for operator.wait_for_qa_ready.disable: clears wait_for_qa_ready."""
        self._wait_for_qa_ready = False

    # -- observing -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(summary)`` after every state or history change, in order, from the
        thread that caused it. It must not block."""
        with self._dispatch_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._dispatch_lock:
            self._listeners.remove(listener)

    def wait_for_state(
        self,
        pid: int,
        states: ProcedureState | Iterable[ProcedureState],
        timeout: float | None = None,
    ) -> ProcedureSummary:
        """Block until procedure ``pid`` is in one of ``states`` (or has ended); return its
        summary. Raises TimeoutError."""
        wanted = {states} if isinstance(states, ProcedureState) else set(states)
        with self._changed:
            ok = self._changed.wait_for(
                lambda: (
                    self._states.get(pid) in wanted
                    or pid not in self._states
                    or self._states[pid].is_final
                ),
                timeout,
            )
            if not ok:
                state = self._states[pid].name
                raise TimeoutError(f"Procedure {pid} is still {state} after {timeout} s")
            self._record(pid)
            return self._summary(pid)

    # -- life ------------------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """The ID the next prepared procedure will get."""
        return self._manager.next_id

    def shutdown(self, grace: float | None = None) -> None:
        """Stop every procedure and end every process this service started.

        :param grace: seconds each script has after SIGTERM (default: ``stop_grace``)
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._atexit)
        self._management.close()
        for handler, topic in (
            (self.handle_wait_for_qa_ready_enable, WAIT_FOR_QA_READY_ENABLE),
            (self.handle_wait_for_qa_ready_disable, WAIT_FOR_QA_READY_DISABLE),
        ):
            pub.unsubscribe(handler, topic)
        self._supervisor.shutdown(grace=grace)
        self._output.close()

    # -- events from the supervisor (its thread) ---------------------------------------------

    def _on_state(
        self, pid: int, state: ProcedureState, when: float, info: dict[str, Any] | None
    ) -> None:
        abort_id = None
        with self._lock:
            rec = self._records.get(pid)
            if rec is None:
                return
            old = self._states.get(pid)
            try:
                check_transition(old, state)
            except IllegalTransition as exc:
                # never applied: the table is the law; tests see the list
                LOGGER.error("Procedure %s: refused the transition %s", pid, exc)
                self.illegal_transitions.append((pid, old, state))
                return
            self._states[pid] = state
            rec.history.process_states.append((state, when))
            if info:
                if info.get("stacktrace"):
                    rec.history.stacktrace = info["stacktrace"]
                if "callables" in info:
                    rec.callables = dict(info["callables"])
                if info.get("git_commit") and isinstance(rec.script, GitScript):
                    git_args = dataclasses.replace(
                        rec.script.git_args, git_commit=info["git_commit"]
                    )
                    rec.script = dataclasses.replace(rec.script, git_args=git_args)
            if state.is_final or (state is ProcedureState.READY and old is ProcedureState.RUNNING):
                rec.claims_run = False
            if state is not ProcedureState.RUNNING:
                rec.pause_pending = False  # reached a checkpoint, or the function has ended
            self._outbox.append((pid, state, self._summary(pid)))
            if state.is_final:
                self._ended.append(pid)
                abort_id = self._abort_after.pop(pid, None)
                self._trim_history()
            self._changed.notify_all()
        if state is ProcedureState.FAILED:
            LOGGER.error("Procedure %s FAILED:\n%s", pid, rec.history.stacktrace)
        self._dispatch()
        if abort_id is not None:
            self._start_abort(pid, abort_id)

    def _on_update(self, pid: int, news: Any) -> None:
        """A worker's progress (announced at once) or the result of its function (shown with
        the READY that follows it)."""
        with self._lock:
            rec = self._records.get(pid)
            if rec is None or self._states[pid].is_final:
                return
            if isinstance(news, messages.Result):
                rec.result = news.value
                return
            rec.progress = {"fraction": news.fraction, "message": news.message, "time": news.time}
            self._outbox.append((pid, None, self._summary(pid)))
        self._dispatch()

    def _on_pubsub(self, pid: int | None, topic: str, kwargs: dict[str, Any]) -> None:
        if pid is not None:
            self._output.message(pid, topic, kwargs)
        pub.sendMessage(topic, **kwargs)

    def _start_abort(self, stopped: int, abort_id: int) -> None:
        try:
            self._start(
                StartProcessCommand(abort_id, "main", ProcedureInput(), force_start=True),
                respect_limit=False,
            )
        except ProcedureError as exc:
            LOGGER.error(
                "Procedure %s stopped, but abort procedure %s could not start: %s",
                stopped,
                abort_id,
                exc,
            )

    # -- helpers ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Deliver queued changes in the order they happened, whichever thread gets here."""
        with self._dispatch_lock:
            while True:
                with self._lock:
                    if not self._outbox:
                        return
                    pid, state, summary = self._outbox.popleft()
                try:
                    if state is not None:  # else only the summary changed (e.g. progress)
                        pub.sendMessage(STATECHANGE_TOPIC, msg_src=pid, new_state=state)
                except Exception:
                    LOGGER.exception("A %s listener failed", STATECHANGE_TOPIC)
                for listener in list(self._listeners):
                    try:
                        listener(summary)
                    except Exception:
                        LOGGER.exception("Procedure %s: a procedure listener failed", pid)

    def _check_open(self) -> None:
        if self._closed:
            raise ProcedureError("The script execution service has been shut down")
        failure = self._supervisor.failure
        if failure is not None:
            raise ProcedureError(
                f"The OET's process supervisor failed ({failure}) and every procedure was "
                "ended; nothing new can run until the device's Init restarts the service"
            )

    def _on_supervisor_failure(self, failure: str) -> None:
        """The supervisor's loop died (its thread): its workers are killed; show every live
        procedure FAILED, then tell the failure listeners."""
        now = time.time()
        with self._lock:
            live = [p for p, s in self._states.items() if not s.is_final]
        for pid in live:
            self._on_state(
                pid,
                ProcedureState.FAILED,
                now,
                {
                    "stacktrace": f"The OET's process supervisor failed, so the process of "
                    f"this procedure was ended; Init the device to restart the service.\n"
                    f"SupervisorFailed: {failure}"
                },
            )
        for listener in list(self._failure_listeners):
            try:
                listener(failure)
            except Exception:
                LOGGER.exception("A failure listener failed")

    def _record(self, pid: int) -> _Record:
        rec = self._records.get(pid)
        if rec is None:
            raise UnknownProcedureError(f"No procedure with ID {pid}")
        return rec

    def _context(self) -> ScriptContext:
        return ScriptContext(wait_for_qa_ready=self._wait_for_qa_ready)

    def _summary(self, pid: int) -> ProcedureSummary:
        rec = self._records[pid]
        return ProcedureSummary(
            id=pid,
            script=rec.script,
            script_args=list(rec.script_args),
            history=ProcedureHistory(list(rec.history.process_states), rec.history.stacktrace),
            state=self._states[pid],
            progress=None if rec.progress is None else dict(rec.progress),
            result=rec.result,
            pause_pending=rec.pause_pending,
        )

    def _subarray_id(self, pid: int) -> Any:
        for capture in self._records[pid].script_args:
            if "subarray_id" in capture.fn_args.kwargs:
                return capture.fn_args.kwargs["subarray_id"]
        return None

    def _trim_history(self) -> None:
        while len(self._ended) > self.history_limit:
            old = self._ended.popleft()
            self._records.pop(old, None)
            self._manager.forget(old)
            self._output.forget(old)

    def _check_size(self, fn_name: str, args: ProcedureInput) -> None:
        """Refuse arguments whose JSON is over ``max_argument_size``: every summary of the
        procedure carries them, in every event, for as long as it is kept."""
        size = strictjson.size([list(args.args), args.kwargs])
        if size > self.max_argument_size:
            raise RequestLimitError(
                f"The arguments of {fn_name} are {size} bytes of JSON, more than the limit of "
                f"{self.max_argument_size} (device property MaxArgumentSize); pass large data "
                "another way, e.g. the path or URL of a file the script reads"
            )

    def _check_script(self, script: ExecutableScript) -> str | None:
        """Refuse scripts that may not or cannot be loaded; return the file to load."""
        if isinstance(script, GitScript):
            try:
                check_git_args(script.git_args, self.allowed_git_repos)
            except (ValueError, PermissionError) as exc:
                raise ScriptRejectedError(str(exc)) from None
            return None
        if not isinstance(script, FileSystemScript):
            raise ScriptRejectedError(f"Unsupported script type: {type(script).__name__}")
        real = os.path.realpath(script.path)
        if self.script_roots is not None and not any(
            is_within(real, root) for root in self.script_roots
        ):
            roots = ", ".join(self.script_roots) or "(none configured)"
            raise ScriptRejectedError(
                f"Script {script.path} is outside the allowed script directories: {roots}"
            )
        if not os.path.exists(real):
            raise ScriptRejectedError(f"Script file not found: {script.path}")
        if not os.path.isfile(real):
            raise ScriptRejectedError(f"Script {script.path} is not a regular file")
        if not os.access(real, os.R_OK):
            raise ScriptRejectedError(f"Script {script.path} is not readable")
        return real
