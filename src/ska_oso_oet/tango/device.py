"""The ObservationExecutionTool Tango device: a thin facade over ScriptExecutionService.

It parses and validates JSON requests (the pydantic models of :mod:`procedure.ui`), calls the
service, turns refusals into ``DevFailed`` with a message a person can act on, and pushes a
change and archive event of ``procedureSummaries`` and of the typed attributes of
:mod:`.face` for every state or history change, of ``procedureOutput`` and
``procedureMessages`` for what scripts write and send, and change events of State and Status.
No business rule lives here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tango
from tango import AttrWriteType, DevState
from tango.server import attribute, command, device_property

from ska_oso_oet.procedure import catalogue, history, output, settings, ui
from ska_oso_oet.procedure.application import (
    ProcedureSummary,
    ScriptExecutionService,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.errors import (
    InvalidArgumentsError,
    ProcedureError,
    UnknownProcedureError,
)
from ska_oso_oet.procedure.scripts import FileSystemScript, ProcedureInput
from ska_oso_oet.procedure.states import ACTIVE_STATES
from ska_oso_oet.procedure.ui import server as rest
from ska_oso_oet.tango import face
from ska_oso_oet.tango.ska import ACCEPTING_MODES, AdminMode, HealthState, SKADevice

LOGGER = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Most seconds a script has after SIGTERM when Init or shutdown stops it.
INIT_GRACE = 2.0


def _throw(reason: str, desc: str, origin: str) -> None:
    tango.Except.throw_exception(reason, desc, origin)


def translate_errors(fn: F) -> F:
    """Turn the service's refusals into DevFailed whose desc says what to do."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        origin = f"ObservationExecutionTool.{fn.__name__}"
        try:
            if args and isinstance(args[0], str) and len(args[0]) > self.MaxRequestSize:
                raise ui.RequestError(
                    f"The request is {len(args[0])} bytes, more than the limit of "
                    f"{self.MaxRequestSize} (device property MaxRequestSize)"
                )
            return fn(self, *args)
        except tango.DevFailed:
            raise
        except ui.RequestError as exc:
            _throw("OET_InvalidRequest", str(exc), origin)
        except InvalidArgumentsError as exc:
            _throw("OET_InvalidRequest", str(exc), origin)
        except UnknownProcedureError as exc:
            _throw("OET_UnknownProcedure", str(exc), origin)
        except ProcedureError as exc:
            _throw("OET_Refused", str(exc), origin)
        except Exception as exc:  # never let an exception escape as a crash
            LOGGER.exception("%s failed", origin)
            _throw("OET_InternalError", f"{type(exc).__name__}: {exc}", origin)

    return wrapper  # type: ignore[return-value]


def _procedure_id(request: str, command: str) -> int:
    """The ID in ``{"id": N}``, the argument of Pause and Resume."""
    example = f'{command} takes {{"id": N}}, e.g. {{"id": 1}}'
    try:
        doc = json.loads(request)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ui.RequestError(f"The request is not valid JSON ({exc}); {example}") from None
    if not isinstance(doc, dict) or set(doc) != {"id"}:
        raise ui.RequestError(f"Invalid request: {example}")
    pid = doc["id"]
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise ui.RequestError(f"Invalid request: id must be an integer; {example}")
    return pid


def _property(name: str) -> Any:
    """The device property of service setting ``name``, as :mod:`.settings` declares it."""
    spec = settings.setting(name)
    return device_property(dtype=spec.dtype, default_value=spec.default, doc=spec.doc)


@dataclasses.dataclass
class _Reset:
    """An event thread item: the list starts again as the new service holds it."""

    summaries: list[ProcedureSummary]


def _running_status(running: Sequence[int], paused: Sequence[int]) -> str:
    """Status while procedures run: which run and which wait, PAUSED, for Resume or Stop."""
    waiting = [p for p in running if p in paused]
    going = [p for p in running if p not in paused]
    parts = []
    if going:
        parts.append(f"Running procedure {', '.join(map(str, going))}")
    if waiting:
        parts.append(f"Paused procedure {', '.join(map(str, waiting))} (Resume or Stop it)")
    return "; ".join(parts)


class ObservationExecutionTool(SKADevice):
    """Runs observing scripts, each in its own supervised process."""

    _events: queue.SimpleQueue[Any] | None = None  # made at the first init, kept for good

    _next_id = 1  # procedure IDs go on increasing across Init
    _catalogue: tuple[list[str], catalogue.Catalogue] | None = None  # ListScripts' (roots, it)

    # The service's settings, each declared once in procedure.settings.
    ScriptRoots = _property("script_roots")
    AbortScript = _property("abort_script")
    StopGracePeriod = _property("stop_grace")
    HistoryLength = _property("history_limit")
    MaxRunning = _property("max_running")
    SpareWorkers = _property("spare_workers")
    PreloadModules = _property("preload_modules")
    AllowedGitRepositories = _property("allowed_git_repos")
    GitCacheDirectory = _property("git_cache_dir")
    GitTimeout = _property("git_timeout")
    MaxEnvironments = _property("max_environments")
    EnvironmentTimeout = _property("install_timeout")
    DataDirectory = _property("data_dir")
    OutputLimit = _property("output_limit")
    MaxRequestSize = _property("max_request_size")
    MaxArgumentSize = _property("max_argument_size")
    MaxSummariseIds = _property("max_summarise_ids")
    MaxProcedures = _property("max_procedures")
    # The REST API served beside the device (procedure.ui.server); not settings of the service.
    RestPort = device_property(
        dtype=int,
        doc="TCP port of the REST API (0: off; not set: $OET_REST_PORT, else off)",
    )
    RestHost = device_property(
        dtype=str,
        doc="Address the REST API listens on (not set: $OET_REST_HOST, else 127.0.0.1); a "
        "non-loopback address makes it reachable from other machines",
    )
    RestPrefix = device_property(
        dtype=str, default_value=rest.DEFAULT_PREFIX, doc="Path prefix of the REST API"
    )
    # The durable history (procedure.history), kept by the device, not a service setting.
    KeepHistory = device_property(
        dtype=bool,
        default_value=True,
        doc="Keep every summary change in DataDirectory/devices/<device>/history.sqlite and "
        "take the history back on start and Init (false: the history ends with the service)",
    )

    # -- life ----------------------------------------------------------------------------------

    def init_device(self) -> None:
        super().init_device()
        self.init_ska()
        self._ses: ScriptExecutionService | None = None
        self._rest: rest.RestServer | None = None
        if self._events is None:  # the first init: the device's one event thread, for good
            # each procedure's summary as JSON text: only the changed one is serialised again
            # on a change
            self._summary_text: dict[int, str] = {}
            self._summaries_json = "[]"
            self._face = face.Face()  # typed attributes (procedureChange, procedureIds, ...)
            self._face_pushed: dict[str, Any] = {}  # the value each last had in an event
            self._last_output = self._last_message = ""
            # summaries, output, script messages and resets, pushed in order by one thread
            self._events = queue.SimpleQueue()
            # set while the device is initialised: between a delete and the next init (an
            # Init, or the end of the server) the event thread pushes nothing
            self._live = threading.Event()
            self._resets_pending = 0  # Resets queued and not yet pushed
            self._resets_lock = threading.Lock()
            threading.Thread(
                target=self._push_loop, args=(self._events,), name="oet-events", daemon=True
            ).start()
        self._shown: tuple[DevState, str] | None = None  # the State and Status last set
        for name in ("procedureOutput", "procedureMessages"):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        for name in face.ATTRIBUTES:
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        for name in ("procedureSummaries", "State", "Status"):
            self.set_change_event(name, True, False)
        self.set_archive_event("procedureSummaries", True, False)
        self.set_change_event("waitForQaReady", True, False)
        self._store: history.HistoryStore | None = None
        try:
            # what lasts: the ended procedures of earlier runs come back, IDs go on
            loaded = history.Loaded([], 1, [])
            if self.KeepHistory:
                self._store = history.HistoryStore(
                    output.device_data_dir(self.DataDirectory, self.get_name()),
                    self.HistoryLength,
                )
                loaded = self._store.load()
            self._ses = self._make_service(loaded)
        except (ValueError, ProcedureError, OSError) as exc:  # OSError: the data folder
            if self._store is not None:
                self._store.close()
                self._store = None
            status = f"Bad device configuration: {exc}"
            self._shown = (DevState.FAULT, status)  # their events go out with the list
            self.set_state(DevState.FAULT)
            self.set_status(status)
            self.set_health(HealthState.FAILED)
            LOGGER.error("Bad device configuration: %s", exc)
            # what was queued before (an Init's ends) still goes out, then an empty list
            with self._resets_lock:
                self._resets_pending += 1
            self._events.put(_Reset([]))
            self._live.set()
            return
        # State and Status are right when Init returns (from what the new service holds, not
        # the queued ends of before); their events follow with the list, which is queued
        # before anything of the new service can be
        self._set_state(running=())  # the history taken back holds only ended procedures
        with self._resets_lock:
            self._resets_pending += 1  # until it is pushed, the State set here stands
        self._events.put(_Reset(loaded.summaries))
        if self._store is not None:
            self._ses.add_listener(self._store.put)
        self._ses.add_listener(self._events.put)
        self._ses.add_output_listener(self._events.put)
        self._ses.add_failure_listener(self._events.put)  # after the FAILED summaries
        self._rest = rest.serve(
            self._ses,
            self.RestHost,
            self.RestPort,
            prefix=self.RestPrefix,
            refusal=self._refusal,
            name=self.get_name(),
        )
        self.set_write_value("waitForQaReady", self._ses.wait_for_qa_ready)
        self._live.set()

    def _make_service(self, loaded: history.Loaded) -> ScriptExecutionService:
        values = {spec.name: getattr(self, spec.tango_name) for spec in settings.SETTINGS}
        abort = values.pop("abort_script")
        return ScriptExecutionService(
            abort_script=FileSystemScript(abort) if abort else None,
            first_id=max(self._next_id, loaded.next_id),
            restored=loaded.summaries,
            **{
                **values,
                "script_roots": list(values["script_roots"]),
                "preload_modules": list(values["preload_modules"]),
                "allowed_git_repos": list(values["allowed_git_repos"]),
                "git_cache_dir": values["git_cache_dir"] or None,
                "data_dir": output.device_data_dir(values["data_dir"], self.get_name()),
            },
        )

    def delete_device(self) -> None:
        """Init and server shutdown: stop every procedure; their final states are queued.

        Scripts get at most INIT_GRACE seconds after SIGTERM here, so that Init returns
        within a client's default timeout. Nothing is pushed from here: the device's one
        event thread pushes the final states, then the list as the new init has it, in that
        order, once Init has returned (while Init holds the device a push waits for it).
        """
        self._live.clear()  # until the next init: the device may be going away for good
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        ses, self._ses = self._ses, None
        if ses is not None:
            ses.shutdown(grace=min(self.StopGracePeriod, INIT_GRACE))
            self._next_id = ses.next_id
        if self._store is not None:
            self._store.close()  # what the shutdown changed is written first
            self._store = None
        self.delete_ska()
        super().delete_device()

    # -- events --------------------------------------------------------------------------------

    def _push_loop(self, events: queue.SimpleQueue[Any]) -> None:
        """Push one event per change, in order, from one omniORB-aware thread: the device's
        only event thread, from its first init to the end of the server."""
        with tango.EnsureOmniThread():
            while True:
                summary = events.get()
                self._live.wait()  # an item of an Init waits for the new init, never lost
                if isinstance(summary, _Reset):
                    with self._resets_lock:
                        self._resets_pending -= 1
                    try:
                        self._reset(summary.summaries)
                    except Exception:
                        LOGGER.exception("Pushing the list after an Init failed")
                    continue
                if isinstance(summary, output.OutputBatch | output.ScriptMessage):
                    self._push_output(summary)
                    continue
                if isinstance(summary, str):  # the supervisor's failure: State FAULT
                    try:
                        self._update_state()
                    except Exception:  # this thread must live on, whatever one push did
                        LOGGER.exception("Pushing the supervisor's failure failed")
                    continue
                try:
                    self._publish(summary)
                except Exception:  # keep pushing whatever one push did
                    LOGGER.exception("Pushing the change of procedure %s failed", summary.id)

    def _push_output(self, item: output.OutputBatch | output.ScriptMessage) -> None:
        """An output batch (procedureOutput) or a script message (procedureMessages)."""
        try:
            text = item.to_json()
            if isinstance(item, output.OutputBatch):
                self._last_output = text
                name = "procedureOutput"
            else:
                self._last_message = text
                name = "procedureMessages"
            self._push_both(name, text)
        except Exception:
            LOGGER.exception("Procedure %s: pushing its output or message failed", item.id)

    def _reset(self, summaries: list[ProcedureSummary]) -> None:
        """After an init: the list is what the new service holds (the history it took back)."""
        self._summary_text.clear()
        self._face = face.Face()
        for summary in summaries:
            self._face.update(summary, self._keep(summary), None)
        self._rejoin()
        self._set_state()
        self._push_both("procedureSummaries", self._summaries_json)
        self._push_face(every=True)
        self._push_state()

    def _publish(self, summary: ProcedureSummary) -> None:
        text = self._keep(summary)
        held: set[int] | None = None
        if summary.state.is_final and self._ses is not None:
            held = set(self._ses.procedure_ids())
            # the ended procedures the service no longer holds leave the list; this one, if
            # it is one of them (HistoryLength reached), only after its end has been shown
            for pid in [p for p in self._summary_text if p not in held and p != summary.id]:
                del self._summary_text[pid]
        self._face.update(summary, text, None if held is None else held | {summary.id})
        self._rejoin()
        # State is set first, so that a client reacting to the event reads the new one; the
        # change event goes out before anything else, for it is what clients wait for. The
        # ends of before an Init leave State as the Init set it, from the new service.
        changed = self._set_state() if not self._resets_pending else False
        self._push_both("procedureSummaries", self._summaries_json)
        self._push_face()
        if changed:
            self._push_state()
        if held is not None and summary.id not in held:  # shown ended: now it goes
            del self._summary_text[summary.id]
            self._rejoin()
            self._face.update(summary, text, held)

    def _keep(self, summary: ProcedureSummary) -> str:
        """Serialise the summary that changed (only it: the others keep their text)."""
        text = self._summary_text[summary.id] = ui.to_json(summary)
        return text

    def _rejoin(self) -> None:
        self._summaries_json = "[" + ",".join(self._summary_text.values()) + "]"

    def _push_face(self, every: bool = False) -> None:
        """Change and archive events of the typed attributes whose values changed (``every``:
        all of them); their values already agree with each other."""
        for name in face.ATTRIBUTES:
            value = self._face.value(name)
            if not every and self._face_pushed.get(name) == value:
                continue  # an event is a change: none for a value that stayed
            self._face_pushed[name] = value
            self._push_both(name, value)

    def _update_state(self) -> None:
        if self._set_state():
            self._push_state()

    def _push_state(self) -> None:
        assert self._shown is not None
        self.push_change_event("State", self._shown[0])
        self.push_change_event("Status", self._shown[1])

    def _set_state(self, running: Sequence[int] | None = None) -> bool:
        """Set State and Status from the procedures RUNNING or PAUSED (``running``, else
        those shown) and adminMode; True if they changed."""
        if self._ses is None:
            return False
        if self._ses.failure is not None:
            state = DevState.FAULT
            status = (
                f"The process supervisor failed ({self._ses.failure}); every procedure was "
                "ended and no new one can run: run Init to restart the service"
            )
        elif self._admin_mode not in ACCEPTING_MODES:
            state, status = DevState.DISABLE, f"Disabled: adminMode is {self._admin_mode.name}"
        else:
            running = self._face.running if running is None else running
            if running:
                state = DevState.RUNNING
                status = _running_status(running, self._face.paused)
            else:
                state, status = DevState.ON, "Ready: no procedure is running"
        healthy = HealthState.OK if self._ses.healthy else HealthState.FAILED
        if healthy is HealthState.OK and self._store is not None and self._store.problem:
            healthy = HealthState.DEGRADED  # until the next clean start; the log says why
        self.set_health(healthy)
        if (state, status) == self._shown:
            return False
        self._shown = (state, status)
        self.set_state(state)
        self.set_status(status)
        return True

    def admin_mode_changed(self, mode: AdminMode) -> None:
        self._update_state()

    # -- commands ------------------------------------------------------------------------------

    def _refusal(self) -> str | None:
        """Why the device refuses to prepare or start scripts now; None when it accepts."""
        if self._admin_mode in ACCEPTING_MODES:
            return None
        return (
            f"The device is disabled (adminMode {self._admin_mode.name}); set adminMode "
            "to ONLINE to prepare or start scripts"
        )

    def _service(self, accepting: bool = False) -> ScriptExecutionService:
        if self._ses is None or (accepting and self._ses.failure is not None):
            _throw("OET_NotReady", self.get_status(), "ObservationExecutionTool")
        refusal = self._refusal() if accepting else None
        if refusal:
            _throw("OET_Disabled", refusal, "ObservationExecutionTool")
        assert self._ses is not None
        return self._ses

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"script": {"script_type": "filesystem", "script_uri": "file:///abs/x.py"}, '
        '"script_args": {"init": {"args": [], "kwargs": {}}}}',
        doc_out="ProcedureSummary JSON, state CREATING: loading goes on in the background",
    )
    @translate_errors
    def Prepare(self, request: str) -> str:
        ses = self._service(accepting=True)
        return ui.to_json(ses.prepare(ui.parse_prepare(face.bare_uri_request(request))))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"id": 1, "fn_name": "main", "run_args": {"args": [], "kwargs": {}}, '
        '"force_start": false}',
        doc_out="ProcedureSummary JSON",
    )
    @translate_errors
    def Start(self, request: str) -> str:
        ses = self._service(accepting=True)
        return ui.to_json(ses.start(ui.parse_start(request)))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"id": 1, "run_abort": false}',
        doc_out="JSON list: the abort procedure's summary when one was started, else []",
    )
    @translate_errors
    def Stop(self, request: str) -> str:
        ses = self._service()
        return ui.to_json(ses.stop(ui.parse_stop(request)))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"id": 1}',
        doc_out="ProcedureSummary JSON; it is PAUSED at the script's next checkpoint() "
        "(pause_pending until then); refused unless RUNNING",
    )
    @translate_errors
    def Pause(self, request: str) -> str:
        ses = self._service()
        return ui.to_json(ses.pause(_procedure_id(request, "Pause")))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"id": 1}',
        doc_out="ProcedureSummary JSON; refused unless PAUSED or a pause is pending",
    )
    @translate_errors
    def Resume(self, request: str) -> str:
        ses = self._service()
        return ui.to_json(ses.resume(_procedure_id(request, "Resume")))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='JSON list of procedure IDs, e.g. [1, 2]; "" or [] for every procedure',
        doc_out="JSON list of ProcedureSummary",
    )
    @translate_errors
    def Summarise(self, request: str) -> str:
        ses = self._service()
        return ui.to_json(ses.summarise(ui.parse_ids(request)))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='""',
        doc_out='JSON list: [{"script_uri": ..., "doc": ..., "functions": [{"name": ..., '
        '"signature": ..., "doc": ...}]}] for every .py file under ScriptRoots, read without '
        "running it",
    )
    @translate_errors
    def ListScripts(self, request: str) -> str:
        if request.strip() not in ("", '""'):
            raise ui.RequestError('ListScripts takes no argument: send ""')
        roots = list(self.ScriptRoots)  # none: [], as the device accepts no file script then
        if self._catalogue is None or self._catalogue[0] != roots:
            self._catalogue = (roots, catalogue.Catalogue(roots))  # keeps what it parsed
        return json.dumps(self._catalogue[1].list())

    @command(
        dtype_in=int,
        dtype_out=str,
        doc_in="ID of a READY procedure",
        doc_out="ProcedureSummary JSON: its main() started with no arguments",
    )
    @translate_errors
    def StartProcedure(self, procedure_id: int) -> str:
        ses = self._service(accepting=True)
        return ui.to_json(ses.start(StartProcessCommand(procedure_id, "main", ProcedureInput())))

    @command(
        dtype_in=int,
        dtype_out=str,
        doc_in="ID of the procedure to stop",
        doc_out="JSON list, as Stop with run_abort false: []",
    )
    @translate_errors
    def StopProcedure(self, procedure_id: int) -> str:
        ses = self._service()
        return ui.to_json(ses.stop(StopProcessCommand(procedure_id, run_abort=False)))

    @command(
        dtype_out=str,
        doc_out="JSON list of the abort procedures started: every RUNNING or PAUSED procedure "
        "is stopped as by Stop with run_abort true",
    )
    @translate_errors
    def Abort(self) -> str:
        ses = self._service()
        aborts: list[ProcedureSummary] = []
        # what the service holds now, not what the events have shown so far
        for pid in [s.id for s in ses.summarise() if s.state in ACTIVE_STATES]:
            try:
                aborts.extend(ses.stop(StopProcessCommand(pid, run_abort=True)))
            except ProcedureError as exc:  # ended meanwhile: nothing to stop
                LOGGER.info("Abort: procedure %s not stopped: %s", pid, exc)
        return ui.to_json(aborts)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"id": 1, "since": 0}',
        doc_out='{"id": 1, "lines": [LINE, ...], "next": 42, "dropped": 0}: the kept output '
        "lines with seq >= since (a page: ask again from next); LINE is {seq, time, stream, "
        "text} (and level for log lines)",
    )
    @translate_errors
    def GetOutput(self, request: str) -> str:
        ses = self._service()
        try:
            pid, since = output.parse_get_output(request)
        except ValueError as exc:
            raise ui.RequestError(str(exc)) from None
        return json.dumps(ses.get_output(pid, since))

    # -- attributes ----------------------------------------------------------------------------

    @attribute(
        dtype=str,
        doc='JSON {"id": 1, "lines": [LINE, ...]} (and "skipped": N when an event could not '
        "carry every line): the lines a procedure wrote since its previous event; events in "
        "batches, at most one per procedure every 50 ms",
    )
    def procedureOutput(self) -> str:
        return self._last_output

    @attribute(
        dtype=str,
        doc='JSON {"id": 1, "topic": ..., "time": ..., "msg_src": ..., "data": {...}}: one '
        "event per pypubsub message a script sends",
    )
    def procedureMessages(self) -> str:
        return self._last_message

    @attribute(
        dtype=str,
        doc="JSON list of every ProcedureSummary the device holds; an event on every change",
    )
    def procedureSummaries(self) -> str:
        return self._summaries_json

    @attribute(
        dtype=str,
        label="Last change",
        doc="JSON summary of the procedure that changed last: one event per state or history "
        "change, in the same order as procedureSummaries, its size whatever the history",
    )
    def procedureChange(self) -> str:
        return self._face.change

    @attribute(
        dtype=(int,),
        max_dim_x=face.MAX_PROCEDURES,
        label="Procedure IDs",
        doc="The ID of every procedure held, ascending",
    )
    def procedureIds(self) -> list[int]:
        return list(self._face.ids)

    @attribute(
        dtype=(str,),
        max_dim_x=face.MAX_PROCEDURES,
        label="Procedure states",
        doc="The state of each procedure in procedureIds, by name, in the same order",
    )
    def procedureStates(self) -> list[str]:
        return list(self._face.states)

    @attribute(
        dtype=(str,),
        max_dim_x=face.MAX_PROCEDURES,
        label="Procedure scripts",
        doc="The script URI of each procedure in procedureIds, in the same order",
    )
    def procedureScripts(self) -> list[str]:
        return list(self._face.scripts)

    @attribute(
        dtype=(int,),
        max_dim_x=face.MAX_PROCEDURES,
        label="Running procedures",
        doc="IDs of the procedures RUNNING or PAUSED",
    )
    def runningProcedureIds(self) -> list[int]:
        return list(self._face.running)

    @attribute(
        dtype=str,
        label="Last failure",
        doc="'<id> <script file name>: <ExceptionType>: <message>' of the latest FAILED "
        "procedure; empty if none failed",
    )
    def lastFailure(self) -> str:
        return self._face.last_failure

    @attribute(
        dtype=bool,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="Operator override handed to scripts in their ScriptContext",
    )
    def waitForQaReady(self) -> bool:
        return self._ses.wait_for_qa_ready if self._ses is not None else False

    @waitForQaReady.write  # type: ignore[no-redef]
    def waitForQaReady(self, value: bool) -> None:
        ses = self._service()
        if value:
            ses.handle_wait_for_qa_ready_enable(msg_src="tango")
        else:
            ses.handle_wait_for_qa_ready_disable(msg_src="tango")
        self.push_change_event("waitForQaReady", bool(value))
