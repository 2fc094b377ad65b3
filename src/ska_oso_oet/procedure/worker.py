"""The script worker: the child process that loads one script and runs its functions.

Each procedure gets its own worker process. The worker's *main thread* runs the script (its
import, ``init`` and the functions named in Start) so that SIGTERM raises inside the script
itself, even while it sleeps or waits on a lock. A second thread runs the worker's message loop
(:meth:`ScriptWorker.main_loop`), which stays responsive to run requests and pub/sub traffic
while the script works.

This module is preloaded by the launcher that forks every worker, so it imports only the
standard library, pypubsub and the light modules of this package.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from pubsub import pub

from ska_oso_oet import scripting
from ska_oso_oet.procedure import callables, proctree
from ska_oso_oet.procedure import messages as m
from ska_oso_oet.procedure.context import ScriptContext
from ska_oso_oet.procedure.gitmanager import GitSettings
from ska_oso_oet.procedure.scripts import (
    ExecutableScript,
    GitScript,
    ModuleFactory,
    ProcedureInput,
    is_within,
)
from ska_oso_oet.procedure.states import ProcedureState

LOGGER = logging.getLogger(__name__)

#: Topics that the worker does not forward: lifecycle events travel as StateChange records.
#: The server's own topics, which it refuses from a worker.
PRIVATE_TOPIC_PREFIX = m.SERVER_TOPIC_PREFIX


class StopScript(BaseException):
    """Raised inside a running script when the operator stops it (SIGTERM).

    A BaseException, like KeyboardInterrupt, so that a script's ``except Exception`` does not
    swallow it; ``finally`` blocks and context managers still run.
    """


class _Refused(Exception):
    """The worker itself refuses a request (its message is the whole story)."""


@dataclasses.dataclass
class LifecycleMessage:
    """LifecycleMessage is a message type for script lifecycle events."""

    msg_src: str
    new_state: ProcedureState


@dataclasses.dataclass
class RunThreadState:
    """Represents the state of a thread running a user function during its execution."""

    thread: threading.Thread
    fn_name: str
    exception: BaseException | None = None


class _SignalState:
    """Lets the worker defer a stop request while it writes to its pipe.

    Python runs signal handlers in the main thread between bytecodes; raising in the middle of
    a message write would corrupt the stream, so such writes mark themselves critical and the
    handler only records the request.
    """

    def __init__(self) -> None:
        self.critical = 0
        self.pending = False


def script_signal_handler(
    signal_object: _SignalState,
    exception_class: type[BaseException],
    signal_num: int,
    current_stack_frame: types.FrameType | None,
) -> None:
    """Custom signal handling function that simply raises an exception.

    Assuming the running Python script does not catch this exception, it will interrupt script
    execution and result in termination of that script. Sibling script processes are not
    affected. While the worker is in a critical section the exception is deferred until it
    leaves it.
    """
    if signal_object.critical:
        signal_object.pending = True
        return
    raise exception_class(f"stopped by {signal.Signals(signal_num).name}")


class _Channel:
    """The worker's end of its socket to the supervisor, shared by its two threads: records
    of :mod:`.messages` out (JSON), in (pickled, from the server it trusts)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def put(self, msg: m.FromWorker) -> None:
        data = m.encode_from_worker(msg)
        with self._lock:
            self.sock.sendall(data)

    def get(self) -> m.ToWorker:
        """The next message; EOFError when the supervisor has gone."""
        (size,) = m.HEADER.unpack(self._read(m.HEADER.size))
        return m.decode_to_worker(self._read(size))

    def _read(self, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            chunk = self.sock.recv(min(size - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the supervisor has gone")
            buf += chunk
        return bytes(buf)


def _accepts_context(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("context")
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def script_functions(module: types.ModuleType) -> list[str]:
    """Names a Start may call: the callables the script made (:mod:`.callables`)."""
    return callables.allowed_names(module)


class ScriptWorker:
    """ScriptWorker loads user code in a child process, running functions of that user code on
    request.

    It acts on the messages of :mod:`.messages` from its work queue: LOAD (:class:`~.Load`:
    load the script), ENV (:class:`~.PrepareEnv`: install a git script's dependencies), RUN
    (:class:`~.Run`: run a named function) and PUBSUB (:class:`~.PubSub`: a pub/sub message
    from elsewhere, published locally). Messages a script publishes locally with pypubsub are sent
    on to the supervisor, which publishes them in the service's process and passes them to the
    other workers.
    """

    def __init__(
        self,
        name: str,
        startup_event: threading.Event,
        shutdown_event: threading.Event,
        event_q: _Channel,
        work_q: _Channel,
        *args: Any,
        environment: Any = None,
        **kwargs: Any,
    ) -> None:
        self.name = name
        self.startup_event = startup_event
        self.shutdown_event = shutdown_event
        self.event_q = event_q
        self.work_q = work_q
        self.environment = environment
        self.procedure_id: int | None = None
        self.module: types.ModuleType | None = None
        self.run_state: RunThreadState | None = None
        self._tasks: queue.SimpleQueue[m.ToWorker] = queue.SimpleQueue()
        self._signals = _SignalState()
        self._local = threading.local()
        self._os_pid = os.getpid()
        self._checkout: str | None = None
        self._commit: str | None = None
        #: the worker's end of ska_oso_oet.scripting: pauses at checkpoints, progress
        self.agent = scripting.Agent(self._send_pause_state, self._send_progress, StopScript)
        stop = functools.partial(script_signal_handler, self._signals, StopScript)
        self.term_handler = functools.partial(_interrupting, self.agent, stop)

    # -- the two threads ---------------------------------------------------------------------

    def run(self) -> None:
        """Entry point in the child process's main thread; never returns."""
        signal.signal(signal.SIGTERM, self.term_handler)
        # a process the script forks (a multiprocessing.Pool's workers, say) is not the
        # worker: SIGTERM ends it as it would any Python process, instead of raising
        # StopScript in code that never expected it (a Pool's terminate() then hung)
        os.register_at_fork(after_in_child=_default_sigterm)
        scripting.install(self.agent)
        _serialise_topic_creation()
        pub.subscribe(self.republish, pub.ALL_TOPICS)
        loop = threading.Thread(target=self.main_loop, name=f"{self.name}-loop", daemon=True)
        loop.start()
        self.startup_event.set()
        try:
            self._serve_tasks()
        except StopScript:
            self._exit(ProcedureState.STOPPED, None)
        except _Refused as exc:
            self._exit(ProcedureState.FAILED, str(exc))
        except SystemExit as exc:
            self._exit(ProcedureState.FAILED, _format_exit(exc))
        except BaseException as exc:
            if self.run_state is not None:
                self.run_state.exception = exc
            self._exit(ProcedureState.FAILED, user_traceback(exc))

    def main_loop(self) -> None:
        """Deliver each message received on the work queue to :meth:`main_func`.

        Delivery ends when the shutdown event is set or the supervisor goes away (the
        worker then ends at once: it is never left orphaned).
        """
        while not self.shutdown_event.is_set():
            try:
                msg = self.work_q.get()
            except (EOFError, OSError, m.ProtocolError):
                _flush_and_exit(3)
            self.main_func(msg)

    def main_func(self, msg: m.ToWorker) -> None:
        """Act on one message from the work queue (runs in the loop thread)."""
        if isinstance(msg, m.PubSub):
            self._deliver(msg.topic, msg.kwargs)
        elif isinstance(msg, m.Pause):
            self.agent.request_pause()
        elif isinstance(msg, m.Resume):
            self.agent.resume()
        else:
            self._tasks.put(msg)

    # -- main thread: the script ---------------------------------------------------------------

    def _serve_tasks(self) -> None:
        while True:
            task = self._tasks.get()  # a stop request raises StopScript here too
            if isinstance(task, m.Load):
                self._load(task)
            elif isinstance(task, m.PrepareEnv):
                self._prepare_environment(task.procedure_id, task.script, task.git_settings)
            elif isinstance(task, m.Run):
                self._run(task.fn_name, task.run_args, task.context)

    def _load(self, task: m.Load) -> None:
        self._assign(task.procedure_id)
        self.publish_lifecycle(ProcedureState.LOADING)
        script: ExecutableScript = task.script
        local_path = task.local_path
        if isinstance(script, GitScript):
            local_path = self._git_script_path(script, task.git_settings)
        self.module = ModuleFactory.get_module(script, path=local_path)
        # a git script's summary records the commit that was loaded, whatever was asked for
        self.publish_lifecycle(ProcedureState.IDLE, git_commit=self._commit)
        init = getattr(self.module, "init", None)
        if callable(init):
            self.publish_lifecycle(ProcedureState.INITIALISING)
            self._call(init, task.init_args, task.context)
        offered = {
            n: callables.describe(getattr(self.module, n)) for n in script_functions(self.module)
        }
        self.publish_lifecycle(ProcedureState.READY, callables=offered)

    def _assign(self, procedure_id: int) -> None:
        """The first message about a procedure: the worker is now its process (IDLE)."""
        if self.procedure_id is None:
            self.procedure_id = procedure_id
            self.publish_lifecycle(ProcedureState.IDLE)

    def _prepare_environment(
        self, procedure_id: int, script: GitScript, settings: GitSettings
    ) -> None:
        """Clone the script's repository and make (or wait for) its environment."""
        self._assign(procedure_id)
        self.publish_lifecycle(ProcedureState.PREP_ENV)
        from ska_oso_oet.procedure import gitmanager
        from ska_oso_oet.procedure.environment import EnvironmentManager

        self._checkout, commit = gitmanager.checkout(script.git_args, settings)
        self._commit = commit
        manager = EnvironmentManager(base_dir=os.path.join(settings.cache_dir, "envs"))
        pinned = dataclasses.replace(script.git_args, git_commit=commit)
        env = manager.ensure_installed(manager.create_env(pinned), self._checkout, settings)
        env.activate()
        self.environment = env
        self.publish_lifecycle(ProcedureState.IDLE)

    def _git_script_path(self, script: GitScript, settings: GitSettings | None) -> str:
        from ska_oso_oet.procedure import gitmanager

        if self._checkout is None:
            if settings is None:
                raise ValueError("No git settings were given for a git script")
            self._checkout, self._commit = gitmanager.checkout(script.git_args, settings)
        root = os.path.realpath(self._checkout)
        path = os.path.realpath(os.path.join(root, script.path))
        if not is_within(path, root):
            raise PermissionError(f"{script.script_uri} points outside its repository")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{script.path} is not in repository {script.git_args.git_repo} at commit "
                f"{os.path.basename(self._checkout)}"
            )
        for extra in (os.path.join(root, "src"), root):  # the repository's own modules
            if os.path.isdir(extra) and extra not in sys.path:
                sys.path.insert(0, extra)
        return path

    def _run(self, fn_name: str, run_args: ProcedureInput, context: ScriptContext) -> None:
        fn = None if self.module is None else callables.allowed(self.module, fn_name)
        if fn is None:
            # a force_start that arrived before READY is checked here, as is any rebinding
            have = ", ".join(script_functions(self.module)) if self.module else ""
            raise _Refused(
                f"The script has no function {fn_name!r} that a Start may call (its own "
                f"functions: {have or 'none'}); imported functions cannot be called"
            )
        self.run_state = RunThreadState(threading.current_thread(), fn_name)
        self.agent.begin_run()
        self.publish_lifecycle(ProcedureState.RUNNING)
        result = None
        try:
            result = self._call(fn, run_args, context)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
            # sys.exit() or sys.exit(0) ends the function successfully
        self._send(m.Result(m.bound_result(result)))
        self.agent.end_run()  # the last progress, and RUNNING if a thread it left is paused
        self.run_state = None
        self.publish_lifecycle(ProcedureState.READY)
        if fn_name == "main":
            self._exit(ProcedureState.COMPLETE, None)

    def _call(
        self, fn: Callable[..., Any], fn_input: ProcedureInput, context: ScriptContext
    ) -> Any:
        kwargs = dict(fn_input.kwargs)
        if _accepts_context(fn):
            if isinstance(context, ScriptContext) and self.procedure_id is not None:
                context = dataclasses.replace(context, procedure_id=self.procedure_id)
            kwargs["context"] = context
        try:
            result = fn(*fn_input.args, **kwargs)
            if inspect.iscoroutine(result):  # an ``async def`` script function
                import asyncio

                result = asyncio.run(result)
        finally:
            if os.getpid() != self._os_pid:
                _flush_and_exit(0)  # a process the script forked came back: it ends here
        return result

    # -- messages out ---------------------------------------------------------------------

    def _send(self, msg: m.FromWorker) -> None:
        if os.getpid() != self._os_pid:
            return  # a process the script forked: the pipe belongs to the worker alone
        signals = self._signals
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            signals.critical += 1
        try:
            self.event_q.put(msg)
        finally:
            if on_main:
                signals.critical -= 1
        if on_main and signals.pending and not signals.critical:
            signals.pending = False
            raise StopScript("stopped by SIGTERM")

    def publish_lifecycle(
        self,
        new_state: ProcedureState,
        *,
        callables: dict[str, Any] | None = None,
        git_commit: str | None = None,
    ) -> None:
        """Broadcast a lifecycle status change event."""
        self._send(m.StateChange(new_state.name, time.time(), callables, git_commit))

    def _send_pause_state(self, state: str, checkpoint: str | None) -> None:
        if checkpoint is not None and state == ProcedureState.PAUSED.name:
            LOGGER.info("Paused at checkpoint %r", checkpoint)
        self.publish_lifecycle(ProcedureState[state])

    def _send_progress(self, fraction: float | None, message: str, when: float) -> None:
        self._send(m.Progress(fraction, message, when))

    def republish(self, topic: Any = pub.AUTO_TOPIC, **kwargs: Any) -> None:
        """Republish a local pypubsub event over the inter-process event bus."""
        if getattr(self._local, "delivering", False):
            return  # came from the bus: do not echo it back
        name = topic.getName()
        if name.startswith(PRIVATE_TOPIC_PREFIX):
            return
        _fence_output()  # what the script wrote before the message reaches the server first
        try:
            self._send(m.PubSub(name, kwargs))
        except (TypeError, ValueError, RecursionError) as exc:
            # Encoding happens before any byte is written, so the stream stays intact.
            LOGGER.warning("Cannot send pub/sub message %r to other processes: %s", name, exc)

    def _deliver(self, topic: str, kwargs: dict[str, Any]) -> None:
        self._local.delivering = True
        try:
            pub.sendMessage(topic, **kwargs)
        except Exception:
            LOGGER.exception("Delivering pub/sub message %r failed", topic)
        finally:
            self._local.delivering = False

    def _exit(self, state: ProcedureState, stacktrace: str | None) -> None:
        self._signals.critical += 1  # nothing may interrupt the last message
        if os.getpid() != self._os_pid:
            _flush_and_exit(0)  # a forked copy of the worker that returned from the script
        killed = kill_descendants()
        try:
            self.agent.flush(blocking=False)  # the script's last progress, if it waits
        except Exception:
            pass
        try:
            self.event_q.put(m.Exit(state.name, stacktrace, killed))
        except Exception:
            pass
        _flush_and_exit(0 if state is ProcedureState.COMPLETE else 1, kill=False)


def _interrupting(
    agent: scripting.Agent,
    handler: Callable[[int, types.FrameType | None], None],
    signal_num: int,
    frame: types.FrameType | None,
) -> None:
    """The SIGTERM handler: a stop wakes every paused checkpoint (it raises there too), then
    raises in the main thread as ever."""
    agent.interrupt()
    handler(signal_num, frame)


def _fence_output() -> None:
    output = sys.modules.get("ska_oso_oet.procedure.output")  # imported when output is captured
    if output is not None:
        output.flush_and_fence()
    else:
        _flush_std_streams()


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _serialise_topic_creation() -> None:
    """pypubsub's topic tree is not thread-safe: the script (main thread) and messages from
    other scripts (loop thread) may create the same topic at once. One lock makes that safe."""
    manager = pub.getDefaultTopicMgr()
    create = manager.getOrCreateTopic
    lock = threading.RLock()

    def get_or_create(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return create(*args, **kwargs)

    manager.getOrCreateTopic = get_or_create  # type: ignore[method-assign]


def _format_exit(exc: SystemExit) -> str:
    return f"The script called sys.exit({exc.code!r})\n" + user_traceback(exc)


_OWN_CODE = os.path.dirname(os.path.abspath(__file__))


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the script's first frame on: the worker's own frames and
    the import machinery's before it say nothing to the script's author. An error in the
    worker itself keeps every frame."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(_OWN_CODE)
        or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        tb = tb.tb_next
    if tb is None and isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))  # file, line, caret
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def kill_descendants() -> list[int]:
    """SIGKILL every process this worker started, however deep and whatever its group;
    return their PIDs.

    The worker is a child subreaper, so an orphaned grandchild is re-parented to it and is
    still found here.
    """
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return []  # no child at all, living or not: nothing to walk (the common case)
    return proctree.freeze_and_kill_descendants(os.getpid())


def become_subreaper() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init; the process group kill still reaches most


def _flush_and_exit(code: int, kill: bool = True) -> None:
    if kill:
        kill_descendants()
    _flush_std_streams()
    os._exit(code)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def worker_process_main(channel_fd: int, name: str, log_fd: int | None = None) -> None:
    """Body of a worker process: serve the supervisor, on the stream socket ``channel_fd``,
    until the procedure ends; its logging records go to ``log_fd`` when given."""
    # Lead a new process group, so that a stop can kill everything the script started and
    # a Ctrl-C meant for the server's terminal does not reach the script.
    os.setpgid(0, 0)
    become_subreaper()
    # A script's own multiprocessing (e.g. a Pool) forks the worker, as it would fork a
    # plain Python process on Linux: its children then have the script's module, which no
    # other process could import by name.
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    if log_fd is not None:
        from ska_oso_oet.procedure import output

        output.capture(log_fd)
    channel = _Channel(socket.socket(fileno=channel_fd))
    worker = ScriptWorker(name, threading.Event(), threading.Event(), channel, channel)
    worker.run()
