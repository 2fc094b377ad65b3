"""The supervisor: the one owner of worker process creation, feeding, stopping and reaping.

This is the seed's ``main_loop``. It runs in a thread of the service's process and waits on
every worker's socket, every worker's exit notices and its own command pipe at once, so that
it reacts at once to a state change, a script's pub/sub message, a stop request or a worker
that died by itself.

Workers are forked by the fork server of :mod:`.launcher`, a process started fresh (not
forked from the possibly multi-threaded service) that has already imported the worker module.
A few spare workers are kept warm, so preparing a script costs one message, not a process
start. Messages are the records of :mod:`.messages`; what a worker sends is checked as
untrusted data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pubsub import pub

from ska_oso_oet.procedure import launcher, output, proctree
from ska_oso_oet.procedure import messages as m
from ska_oso_oet.procedure.proctree import ProcessRef
from ska_oso_oet.procedure.states import ProcedureState

LOGGER = logging.getLogger(__name__)

#: How long to wait for a killed process group to disappear before reporting UNKNOWN.
KILL_CONFIRM_TIMEOUT = 5.0
#: Tries to start one worker process before giving up; then spares pause this long (s).
LAUNCH_ATTEMPTS = 3
LAUNCHER_JOIN_TIMEOUT = 10.0  # seconds a closing supervisor waits for a launch in flight
SPARE_RETRY_DELAY = 5.0
#: Bytes of pub/sub traffic kept for a worker that does not read before more is dropped.
MAX_OUTBOX = 64 * 1024 * 1024

StateCallback = Callable[[int, ProcedureState, float, dict[str, Any] | None], None]
PubSubCallback = Callable[[int | None, str, dict[str, Any]], None]
#: A worker's news that is not a state: (procedure ID, a messages.Progress or messages.Result).
UpdateCallback = Callable[[int, Any], None]


@dataclasses.dataclass(eq=False)
class _Worker:
    """One worker process, as the supervisor sees it."""

    os_pid: int
    sock: socket.socket | None  # the supervisor's end of the worker's channel
    status: launcher.StatusPipe
    procedure_id: int | None = None  # None: a spare
    stopping: bool = False
    killed: bool = False
    deadline: float | None = None
    exit_intent: m.Exit | None = None
    protocol_error: str | None = None  # what was wrong with a message it sent
    snapshot: list[ProcessRef] = dataclasses.field(default_factory=list)
    pidfd: int | None = None  # readable the moment the process ends (Linux)
    reaped: bool = False
    reader: m.FrameReader = dataclasses.field(
        default_factory=lambda: m.FrameReader(m.MAX_FROM_WORKER)
    )
    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    outbox: bytearray = dataclasses.field(default_factory=bytearray)
    pipes: output.WorkerPipes | None = None  # the read ends of its stdout, stderr and log

    @property
    def channel_open(self) -> bool:
        return self.sock is not None

    def send(self, msg: m.ToWorker, droppable: bool = False) -> bool:
        """Queue ``msg`` for the worker without ever blocking (a worker that does not read
        must not stall the supervisor); True while bytes wait for the worker to read them."""
        data = m.encode_to_worker(msg)
        with self.send_lock:
            if self.sock is None:
                return False  # the worker is gone; its exit will be reported
            if droppable and len(self.outbox) > MAX_OUTBOX:
                LOGGER.warning(
                    "Procedure %s: its worker (PID %s) reads nothing: dropped a %s message for it",
                    self.procedure_id,
                    self.os_pid,
                    type(msg).__name__,
                )
                return True
            self.outbox += data
            return self._write()

    def flush(self) -> bool:
        """Write what the worker can take now; True while bytes remain."""
        with self.send_lock:
            return self._write()

    def _write(self) -> bool:
        while self.outbox and self.sock is not None:
            try:
                sent = self.sock.send(self.outbox, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                self.outbox.clear()
                return False
            del self.outbox[:sent]
        return False

    def receive(self) -> tuple[list[bytes], bool]:
        """The bodies of the whole messages waiting, and whether the channel has closed.
        Raises :class:`~.messages.ProtocolError` for a frame over the size limit."""
        assert self.sock is not None
        bodies: list[bytes] = []
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return bodies, False
            except OSError:
                return bodies, True
            if not data:
                return bodies, True
            bodies.extend(self.reader.feed(data))

    def close_channel(self) -> None:
        with self.send_lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self.outbox.clear()


# -- commands queued for the supervisor thread ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Create:
    procedure_id: int
    load: m.Load
    env: m.PrepareEnv | None


@dataclasses.dataclass(frozen=True)
class _Run:
    procedure_id: int
    msg: m.Run


@dataclasses.dataclass(frozen=True)
class _Stop:
    procedure_id: int


@dataclasses.dataclass(frozen=True)
class _Flush:
    procedure_id: int


@dataclasses.dataclass(frozen=True)
class _Launched:
    request: _LaunchRequest
    worker: _Worker | None
    error: BaseException | None


@dataclasses.dataclass(frozen=True)
class _Shutdown:
    grace: float | None


_Command = _Create | _Run | _Stop | _Flush | _Launched | _Shutdown


@dataclasses.dataclass(frozen=True)
class _LaunchRequest:
    procedure_id: int | None  # None: a spare


@dataclasses.dataclass
class _Pending:
    """A procedure waiting for its worker process to start."""

    msgs: list[m.ToWorker]
    stop_requested: bool = False


def describe_exit(exitcode: int | None) -> str:
    """Words for a process's exit code (negative: the signal that killed it)."""
    if exitcode is None:
        return "exited with an unknown status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (signal {-exitcode})"
    return f"exited with exit code {exitcode}"


def kill_tree(pgid: int, extra: Iterable[ProcessRef], leader_alive: bool = True) -> None:
    """SIGKILL worker ``pgid``, its process group and the given processes."""
    proctree.kill_group_and(pgid, extra, leader_alive)


def confirm_gone(pgid: int, extra: list[ProcessRef], timeout: float) -> bool:
    """Kill what is left of a reaped worker's process tree; wait until none of it lives."""

    def kill() -> None:
        kill_tree(pgid, extra, leader_alive=False)

    kill()
    return proctree.poll_until(
        lambda: not proctree.group_alive(pgid) and not any(p.alive() for p in extra),
        timeout,
        kill,
    )


def pids_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of ``pids`` (already sent SIGKILL) is alive."""
    return proctree.poll_until(lambda: not any(proctree.pid_alive(p) for p in pids), timeout)


def _for(request: _LaunchRequest) -> str:
    """Whom a worker is started for, in a log record: "procedure 3" or "a spare"."""
    return "a spare" if request.procedure_id is None else f"procedure {request.procedure_id}"


class Supervisor:
    """Creates, feeds, stops and reaps :class:`~.worker.ScriptWorker` processes.

    All methods but :meth:`main_loop` may be called from any thread: they queue a command for
    the supervisor thread and return at once.
    """

    _names = itertools.count(1)

    def __init__(
        self,
        on_state: StateCallback,
        on_pubsub: PubSubCallback,
        *,
        stop_grace: float,
        spare_workers: int,
        preload_modules: Iterable[str] = (),
        on_update: UpdateCallback | None = None,
        on_output: output.OutputHub | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._output = on_output  # None: workers write to the server's own stdout
        self._on_failure = on_failure
        #: why the supervisor's loop died ("Type: message"), None while it is sound
        self.failure: str | None = None
        self._throttled: set[_Worker] = set()  # workers whose pipes are not read for now
        self._on_state = on_state
        self._on_pubsub = on_pubsub
        self._on_update = on_update
        self.stop_grace = stop_grace
        self.spare_workers = spare_workers
        self._preload = list(preload_modules)
        self._commands: deque[_Command] = deque()
        self._post_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()  # epoll: no limit on how many workers
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._workers: dict[int, _Worker] = {}
        self._spares: deque[_Worker] = deque()
        self._pending: dict[int, _Pending] = {}
        self._launch_q: queue.SimpleQueue[_LaunchRequest | None] = queue.SimpleQueue()
        self._launches = 0  # launch requests not yet answered
        self._spare_launches = 0
        self._spares_paused_until = 0.0
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self.main_loop, name="oet-supervisor", daemon=True)
        self._launcher = threading.Thread(
            target=self._launch_loop, name="oet-launcher", daemon=True
        )

    # -- commands, callable from any thread ----------------------------------------------------

    def start(self) -> None:
        launcher.acquire(self._preload)
        self._launcher.start()
        self._thread.start()

    def create(
        self,
        procedure_id: int,
        script: Any,
        init_args: Any,
        context: Any,
        local_path: str | None = None,
        git_settings: Any = None,
    ) -> None:
        """Start (or take a warm) worker for the procedure and load its script.

        ``local_path`` is the file to load when it is not the script URI's own path; a git
        script that asks for an environment gets a PrepareEnv message first.
        """
        env = None
        if getattr(script, "create_env", False):
            env = m.PrepareEnv(procedure_id, script, git_settings)
        load = m.Load(procedure_id, script, init_args, context, local_path, git_settings)
        self._post(_Create(procedure_id, load, env))

    def run(self, procedure_id: int, fn_name: str, run_args: Any, context: Any) -> None:
        msg = m.Run(fn_name, run_args, context)
        w = self._workers.get(procedure_id)
        if w is not None and not w.stopping:
            # Straight down the worker's socket: a message is not a process operation, and
            # this saves the hop through the supervisor thread.
            if w.send(msg):
                self._post(_Flush(procedure_id))
        else:
            self._post(_Run(procedure_id, msg))

    def stop(self, procedure_id: int) -> None:
        self._post_quiet(_Stop(procedure_id))  # a failed supervisor has ended every worker

    def control(self, procedure_id: int, msg: m.Pause | m.Resume) -> None:
        """Send Pause or Resume to a procedure's worker (dropped when it is stopping or
        gone: a stop wins)."""
        w = self._workers.get(procedure_id)
        if w is not None and not w.stopping and w.send(msg):
            self._post_quiet(_Flush(procedure_id))  # a failed supervisor fails it anyway

    def shutdown(self, grace: float | None = None) -> None:
        """Stop every worker (as a Stop would, with ``grace`` seconds between SIGTERM and
        SIGKILL if given) and end the supervisor thread."""
        if self._thread.is_alive():
            # a supervisor that has failed is closed while its thread still reports the
            # failure: then there is nothing to post, only the thread's end to wait for
            self._post_quiet(_Shutdown(grace))
            self._thread.join((grace if grace is not None else self.stop_grace) + 10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _post(self, command: _Command) -> None:
        with self._post_lock:
            if self._closed:
                raise RuntimeError("The process supervisor has been shut down")
            self._commands.append(command)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def _post_quiet(self, command: _Command) -> bool:
        """Post ``command``; False, and nothing posted, once the supervisor is closed."""
        try:
            self._post(command)
        except RuntimeError:
            return False
        return True

    # -- launching, in a thread of its own so that the loop never waits for a fork -------------

    def _launch_loop(self) -> None:
        while True:
            request = self._launch_q.get()
            if request is None:
                return
            if self._closed:
                continue  # queued before the close: nobody would adopt it
            error: BaseException | None = None
            for attempt in range(LAUNCH_ATTEMPTS):
                try:
                    w = self._launch()
                except Exception as exc:
                    # e.g. a script killed the fork server; the next attempt starts a new one
                    LOGGER.warning(
                        "Could not start a worker process for %s (%r)", _for(request), exc
                    )
                    error = exc
                    time.sleep(0.05 * (attempt + 1))
                else:
                    if not self._post_quiet(_Launched(request, w, None)):
                        # closed while it was launched: nobody will adopt it, and the fork
                        # server, released once this thread has ended, kills it
                        if w.pipes is not None:
                            w.pipes.close()
                        w.close_channel()
                        w.status.close()
                    break
            else:
                LOGGER.error("Could not start a worker process for %s: %r", _for(request), error)
                self._post_quiet(_Launched(request, None, error))

    def _launch(self) -> _Worker:
        name = f"oet-worker-{next(self._names)}"
        pipes = output.WorkerPipes() if self._output is not None else None
        try:
            pid, sock, status = launcher.get(self._preload).spawn(
                name, pipes.write_fds() if pipes else None
            )
        except BaseException:
            if pipes is not None:
                pipes.close()
            raise
        if pipes is not None:
            pipes.close_write_ends()
        sock.setblocking(False)
        return _Worker(os_pid=pid, sock=sock, status=status, pipes=pipes)

    def _request_launch(self, procedure_id: int | None) -> None:
        self._launches += 1
        if procedure_id is None:
            self._spare_launches += 1
        self._launch_q.put(_LaunchRequest(procedure_id))

    # -- the loop ------------------------------------------------------------------------------

    def main_loop(self) -> None:
        """Serve commands, worker messages and worker exits until shut down."""
        failure = None
        try:
            self._loop()
        except Exception as exc:  # a bug here must be loud, and seen by every client
            self.failure = failure = f"{type(exc).__name__}: {exc}"
            LOGGER.exception("The process supervisor failed; stopping every worker")
            for w in list(self._workers.values()) + list(self._spares):
                with contextlib.suppress(Exception):
                    kill_tree(w.os_pid, w.snapshot)
        finally:
            self._close()  # after a failure: before it is reported
        if failure is not None and self._on_failure is not None:
            try:
                self._on_failure(failure)
            except Exception:
                LOGGER.exception("Reporting the supervisor's failure failed")

    def _loop(self) -> None:
        self._top_up_spares()
        while True:
            events = self._selector.select(self._timeout())
            exited: list[_Worker] = []
            for key, mask in events:
                kind, w = key.data
                if kind == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif kind == "channel":
                    if mask & selectors.EVENT_WRITE and not w.flush():
                        self._want_write(w, False)
                    if mask & selectors.EVENT_READ:
                        self._drain(w)
                elif kind == "ended":
                    self._on_ended(w, exited)
                elif kind == "output":
                    self._read_output(w, key.fd)
                else:
                    self._on_status(w, exited)
            while self._commands:
                self._command(self._commands.popleft())
            for w in exited:
                self._reap(w)
            if self._throttled:
                self._resume_output()
            self._enforce_deadlines()
            if self._closing:
                if not self._workers and not self._spares and not self._launches:
                    return
            else:
                self._top_up_spares()

    def _on_ended(self, w: _Worker, exited: list[_Worker]) -> None:
        """The worker's pidfd: the process has ended. When it said why (or was being stopped)
        nothing is missing; otherwise wait for the fork server to report its exit code."""
        self._drain(w)
        status = w.status
        if w.exit_intent is not None or w.stopping or status.lost or status.exitcode is not None:
            exited.append(w)
        else:
            self._unwatch(w.pidfd)

    def _on_status(self, w: _Worker, exited: list[_Worker]) -> None:
        """The worker's status pipe: the fork server reaped it, or went away itself."""
        w.status.read_exit()
        self._unwatch(w.status.fd)
        if w.status.lost and w.pidfd is not None and not launcher.readable(w.pidfd, 0):
            # A script may kill its own parent: the worker lives on, and its pidfd will
            # tell when it ends (with no exit code, for none is left to report it).
            LOGGER.warning(
                "The fork server went away; worker %s (procedure %s) lives on",
                w.os_pid,
                w.procedure_id,
            )
        else:
            exited.append(w)

    def _unwatch(self, fd: int | None) -> None:
        if fd is not None and fd >= 0:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _timeout(self) -> float | None:
        deadlines = [w.deadline for w in self._workers.values() if w.deadline is not None]
        if self._throttled:
            deadlines.append(time.monotonic() + 0.005)  # look at their backlog again soon
        if self._spares_paused_until > time.monotonic():
            deadlines.append(self._spares_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _command(self, command: _Command) -> None:
        if isinstance(command, _Create):
            msgs: list[m.ToWorker] = [command.load]
            if command.env is not None:
                msgs.insert(0, command.env)
            w = self._take_spare()
            if w is None:
                self._pending[command.procedure_id] = _Pending(msgs)
                self._request_launch(command.procedure_id)
            else:
                self._assign(w, command.procedure_id, msgs)
        elif isinstance(command, _Flush):
            w = self._workers.get(command.procedure_id)
            if w is not None:
                self._want_write(w, w.flush())
        elif isinstance(command, _Launched):
            self._adopt(command)
        elif isinstance(command, _Run):
            w = self._workers.get(command.procedure_id)
            if w is not None and not w.stopping:
                self._send(w, command.msg)
            elif command.procedure_id in self._pending:
                self._pending[command.procedure_id].msgs.append(command.msg)
        elif isinstance(command, _Stop):
            w = self._workers.get(command.procedure_id)
            if w is not None:
                self._begin_stop(w)
            elif command.procedure_id in self._pending:
                self._pending[command.procedure_id].stop_requested = True
        elif isinstance(command, _Shutdown):
            self._closing = True
            if command.grace is not None:
                self.stop_grace = command.grace
            self._launch_q.put(None)
            for pending in self._pending.values():
                pending.stop_requested = True
            for w in list(self._workers.values()) + list(self._spares):
                self._begin_stop(w)

    def _adopt(self, launched: _Launched) -> None:
        pid = launched.request.procedure_id
        w = launched.worker
        self._launches -= 1
        if pid is None:
            self._spare_launches -= 1
        if w is None:
            if pid is not None:
                del self._pending[pid]
                self._report(
                    pid,
                    ProcedureState.FAILED,
                    {"stacktrace": f"Could not start a worker process: {launched.error!r}"},
                )
            else:
                self._spares_paused_until = time.monotonic() + SPARE_RETRY_DELAY
            return
        assert w.sock is not None
        self._selector.register(w.sock, selectors.EVENT_READ, ("channel", w))
        self._selector.register(w.status.fd, selectors.EVENT_READ, ("status", w))
        for fd in w.pipes.streams if w.pipes is not None else ():
            self._selector.register(fd, selectors.EVENT_READ, ("output", w))
        try:
            w.pidfd = os.pidfd_open(w.os_pid)
        except (AttributeError, OSError):
            pass  # the fork server's exit report is enough, only slower
        else:
            self._selector.register(w.pidfd, selectors.EVENT_READ, ("ended", w))
        if pid is None:
            self._spares.append(w)
            if self._closing:
                self._begin_stop(w)
            return
        pending = self._pending.pop(pid)
        self._assign(w, pid, pending.msgs)
        if pending.stop_requested:
            self._begin_stop(w)

    def _assign(self, w: _Worker, pid: int, msgs: list[m.ToWorker]) -> None:
        w.procedure_id = pid
        for msg in msgs:
            self._send(w, msg)
        self._workers[pid] = w  # only now may other threads send to it directly

    def _take_spare(self) -> _Worker | None:
        while self._spares:
            w = self._spares.popleft()
            if not w.reaped and w.channel_open and proctree.pid_alive(w.os_pid):
                return w
            self._spares.appendleft(w)  # it is ending: its exit will be reaped
            return None
        return None

    def _top_up_spares(self) -> None:
        if time.monotonic() < self._spares_paused_until:
            return  # starting spares failed just now: try again later
        while len(self._spares) + self._spare_launches < self.spare_workers:
            self._request_launch(None)

    def _drain(self, w: _Worker) -> None:
        """Act on every whole message the worker has sent; a message that is not valid
        fails its procedure (the worker is killed), never the supervisor."""
        if not w.channel_open or w.protocol_error is not None:
            return
        try:
            bodies, closed = w.receive()
            for body in bodies:
                self._message(w, m.decode_from_worker(body))
        except m.ProtocolError as exc:
            self._refuse(w, str(exc))
            return
        if closed:
            self._unwatch(w.sock.fileno() if w.sock is not None else None)
            w.close_channel()

    def _refuse(self, w: _Worker, reason: str) -> None:
        LOGGER.error(
            "Procedure %s: its worker (PID %s) sent an invalid message (%s); killing it",
            w.procedure_id,
            w.os_pid,
            reason,
        )
        w.protocol_error = reason
        if w.sock is not None:
            self._unwatch(w.sock.fileno())
        w.close_channel()
        w.stopping = w.killed = True
        w.deadline = None
        w.snapshot += proctree.descendants(w.os_pid)
        kill_tree(w.os_pid, w.snapshot)

    def _message(self, w: _Worker, msg: m.FromWorker) -> None:
        if isinstance(msg, m.StateChange):
            if w.procedure_id is None:
                return
            try:
                state = ProcedureState[msg.state]
            except KeyError:
                raise m.ProtocolError(f"unknown state {msg.state!r}") from None
            if state.is_final:  # a final state is the supervisor's to report, at the exit
                raise m.ProtocolError(f"a worker cannot report {state.name} as a state change")
            info: dict[str, Any] = {}
            if msg.callables is not None:
                info["callables"] = msg.callables
            if msg.git_commit is not None:
                info["git_commit"] = msg.git_commit
            self._report(w.procedure_id, state, info or None, msg.time)
        elif isinstance(msg, m.PubSub):
            try:
                self._on_pubsub(w.procedure_id, msg.topic, msg.kwargs)
            except Exception:
                LOGGER.exception(
                    "Publishing %r from procedure %s failed", msg.topic, w.procedure_id
                )
            self._broadcast(w, msg)
        elif isinstance(msg, m.Progress | m.Result):
            if w.procedure_id is not None and self._on_update is not None:
                try:
                    self._on_update(w.procedure_id, msg)
                except Exception:
                    LOGGER.exception("Recording news of procedure %s failed", w.procedure_id)
        else:
            if msg.state not in ProcedureState.__members__:
                raise m.ProtocolError(f"unknown state {msg.state!r}")
            w.exit_intent = msg

    def _broadcast(self, source: _Worker, msg: m.PubSub) -> None:
        for other in self._workers.values():
            if other is not source and not other.stopping:
                self._send(other, msg, droppable=True)

    def _send(self, w: _Worker, msg: m.ToWorker, droppable: bool = False) -> None:
        if w.send(msg, droppable):
            self._want_write(w, True)

    def _want_write(self, w: _Worker, wanted: bool) -> None:
        """Watch the worker's socket for room to write while its outbox holds bytes."""
        if w.sock is not None and not w.reaped:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            self._selector.modify(w.sock, events, ("channel", w))

    def _begin_stop(self, w: _Worker) -> None:
        if w.stopping:
            return
        w.stopping = True
        if w.procedure_id is None:  # a spare runs no script: no need to be gentle
            w.killed = True
            kill_tree(w.os_pid, [])
            return
        w.snapshot = proctree.descendants(w.os_pid)
        try:
            os.kill(w.os_pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # already gone; its exit will be reported
        w.deadline = time.monotonic() + self.stop_grace
        if self.stop_grace <= 0:
            self._enforce_deadlines()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if w.deadline is not None and not w.killed and now >= w.deadline:
                LOGGER.warning(
                    "Procedure %s did not end within %.1f s of SIGTERM: killing its process group",
                    w.procedure_id,
                    self.stop_grace,
                )
                w.killed = True
                w.deadline = None
                w.snapshot += proctree.descendants(w.os_pid)
                kill_tree(w.os_pid, w.snapshot)

    def _reap(self, w: _Worker) -> None:
        if w.reaped:
            return
        w.reaped = True
        self._drain(w)
        if w.status.exitcode is None and not w.status.lost and launcher.readable(w.status.fd, 0):
            w.status.read_exit()
        exitcode = w.status.exitcode
        if w.exit_intent is not None and not w.killed:
            # It ended itself after killing everything it had started: wait for those only.
            gone = pids_gone(w.exit_intent.killed, KILL_CONFIRM_TIMEOUT)
        else:
            gone = confirm_gone(w.os_pid, w.snapshot, KILL_CONFIRM_TIMEOUT)
        self._drain_output(w)
        self._forget(w)
        pid = w.procedure_id
        if pid is not None and self._output is not None:
            self._output.end(pid)  # every line it wrote goes out before its final state
        if pid is None:
            if not self._closing:
                LOGGER.warning("Spare worker %s %s", w.os_pid, describe_exit(exitcode))
            return
        self._report(pid, *self._final_state(w, gone, exitcode))

    def _final_state(
        self, w: _Worker, gone: bool, exitcode: int | None
    ) -> tuple[ProcedureState, dict[str, Any]]:
        stacktrace: str | None = None
        if not gone:
            state = ProcedureState.UNKNOWN
            stacktrace = f"Processes of worker {w.os_pid} survived SIGKILL"
        elif w.protocol_error is not None:
            state = ProcedureState.FAILED
            stacktrace = (
                f"The worker process (PID {w.os_pid}) sent an invalid message and was "
                f"killed: {w.protocol_error}"
            )
        elif w.exit_intent is not None:
            state = ProcedureState[w.exit_intent.state]
            stacktrace = w.exit_intent.stacktrace
        elif w.stopping:
            state = ProcedureState.STOPPED
        else:
            state = ProcedureState.FAILED
            stacktrace = (
                f"The worker process (PID {w.os_pid}) {describe_exit(exitcode)} "
                "without reporting an end"
            )
        return state, {"stacktrace": stacktrace, "exitcode": exitcode}

    def _read_output(self, w: _Worker, fd: int) -> None:
        if w.pipes is None:
            return
        if not w.pipes.read(fd, self._output, w.procedure_id):
            self._unwatch(fd)
            w.pipes.close_fd(fd)
        elif w.pipes.backlogged:  # the script writes faster than the server takes it in
            for pipe in w.pipes.streams:
                self._unwatch(pipe)
            self._throttled.add(w)

    def _resume_output(self) -> None:
        """Read the pipes of workers whose backlog of output has gone down again."""
        for w in list(self._throttled):
            if w.reaped or w.pipes is None:
                self._throttled.discard(w)
            elif w.pipes.resume_at <= time.monotonic() and (
                self._output is None or self._output.accepting(w.procedure_id or 0)
            ):
                self._throttled.discard(w)
                w.pipes.backlogged = False
                for fd in w.pipes.streams:
                    self._selector.register(fd, selectors.EVENT_READ, ("output", w))

    def _drain_output(self, w: _Worker) -> None:
        if w.pipes is not None:
            for fd in w.pipes.drain(self._output, w.procedure_id):
                self._unwatch(fd)
                w.pipes.close_fd(fd)

    def _forget(self, w: _Worker) -> None:
        if w.pipes is not None:
            for fd in list(w.pipes.streams):
                self._unwatch(fd)
            w.pipes.close()
            self._throttled.discard(w)
        if w.sock is not None:
            self._unwatch(w.sock.fileno())
        w.close_channel()
        self._unwatch(w.status.fd)
        w.status.close()
        if w.pidfd is not None:
            self._unwatch(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None
        if w.procedure_id is not None:
            self._workers.pop(w.procedure_id, None)
        elif w in self._spares:
            self._spares.remove(w)

    def _report(
        self,
        pid: int,
        state: ProcedureState,
        info: dict[str, Any] | None,
        timestamp: float | None = None,
    ) -> None:
        try:
            self._on_state(pid, state, timestamp or time.time(), info)
        except Exception:
            LOGGER.exception("Recording %s for procedure %s failed", state.name, pid)

    def _close(self) -> None:
        with self._post_lock:
            if self._closed:
                return  # once: after a failure, before it is reported
            self._closed = True
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._launch_q.put(None)
        # a launch still in flight uses the fork server: release it only once the launching
        # thread has ended, or that launch would start a new fork server that nobody ends
        if self._launcher.is_alive() and self._launcher is not threading.current_thread():
            self._launcher.join(LAUNCHER_JOIN_TIMEOUT)
        launcher.release()


class ManagementListener:
    """Subscribes a supervisor to one ProcessManager's ``procedure.management`` topics."""

    def __init__(self, supervisor: Supervisor, manager_name: str) -> None:
        from ska_oso_oet.procedure import manager as mgr

        self._supervisor = supervisor
        self._name = manager_name
        self._topics: list[tuple[Callable[..., Any], str]] = [
            (self.on_create, mgr.CREATE_TOPIC),
            (self.on_run, mgr.RUN_TOPIC),
            (self.on_stop, mgr.STOP_TOPIC),
        ]
        for listener, topic in self._topics:
            pub.subscribe(listener, topic)

    def on_create(
        self,
        msg_src: str,
        procedure_id: int,
        script: Any,
        init_args: Any,
        context: Any,
        local_path: str | None,
        git_settings: Any,
    ) -> None:
        if msg_src == self._name:
            self._supervisor.create(
                procedure_id, script, init_args, context, local_path, git_settings
            )

    def on_run(
        self, msg_src: str, procedure_id: int, fn_name: str, run_args: Any, context: Any
    ) -> None:
        if msg_src == self._name:
            self._supervisor.run(procedure_id, fn_name, run_args, context)

    def on_stop(self, msg_src: str, procedure_id: int) -> None:
        if msg_src == self._name:
            self._supervisor.stop(procedure_id)

    def close(self) -> None:
        for listener, topic in self._topics:
            pub.unsubscribe(listener, topic)
