"""The supervisor: the one owner of worker process creation, feeding, stopping and reaping.

This is the seed's ``main_loop``. It runs in a thread of the service's process and waits on
every worker's pipe, every worker's exit sentinel and its own command pipe at once, so that it
reacts at once to a state change, a script's pub/sub message, a stop request or a worker that
died by itself.

Workers are forked by multiprocessing's fork server, a process started fresh (not forked from
the possibly multi-threaded service) that has already imported the worker module. A few spare
workers are kept warm, so preparing a script costs one message, not a process start.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import queue
import select
import selectors
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing import context as mp_context
from multiprocessing import popen_forkserver, reduction, spawn, util
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil
from pubsub import pub

from ska_oso_oet.procedure import worker as wk
from ska_oso_oet.procedure.states import ProcedureState

LOGGER = logging.getLogger(__name__)

#: How long to wait for a killed process group to disappear before reporting UNKNOWN.
KILL_CONFIRM_TIMEOUT = 5.0
#: Tries to start one worker process before giving up; then spares pause this long (s).
LAUNCH_ATTEMPTS = 3
SPARE_RETRY_DELAY = 5.0

StateCallback = Callable[[int, ProcedureState, float, dict[str, Any] | None], None]
PubSubCallback = Callable[[int | None, str, dict[str, Any]], None]


@dataclasses.dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    os_pid: int
    procedure_id: int | None = None
    stopping: bool = False
    killed: bool = False
    deadline: float | None = None
    exit_intent: tuple[str, str | None] | None = None
    killed_by_worker: list[int] = dataclasses.field(default_factory=list)
    snapshot: list[psutil.Process] = dataclasses.field(default_factory=list)
    conn_open: bool = True
    pidfd: int | None = None  # readable the moment the process ends (Linux)
    sentinel_lost: bool = False  # the fork server died: no exit code will come
    reaped: bool = False

    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    outbox: bytearray = dataclasses.field(default_factory=bytearray)
    sock: socket.socket | None = None

    def send(self, msg: tuple[Any, ...], droppable: bool = False) -> bool:
        """Queue ``msg`` for the worker without ever blocking (a worker that does not read
        must not stall the supervisor); True while bytes wait for the worker to read them."""
        data = _frame(msg)
        with self.send_lock:
            if self.sock is None:
                return False  # the worker is gone; its exit will be reported
            if droppable and len(self.outbox) > MAX_OUTBOX:
                LOGGER.warning(
                    "Worker %s reads nothing: dropped a %s message for it", self.os_pid, msg[0]
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

    def close_sock(self) -> None:
        with self.send_lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self.outbox.clear()


#: Bytes of pub/sub traffic kept for a worker that does not read before more is dropped.
MAX_OUTBOX = 64 * 1024 * 1024


def _frame(msg: tuple[Any, ...]) -> bytes:
    """``msg`` as multiprocessing's Connection frames it (length prefix, then pickle)."""
    payload = bytes(reduction.ForkingPickler.dumps(msg))
    size = len(payload)
    header = struct.pack("!i", size) if size < 0x7FFFFFFF else struct.pack("!iQ", -1, size)
    return header + payload


def default_context(preload_modules: Iterable[str] = ()) -> BaseContext:
    """The fork-server context, with the worker module (and ``preload_modules``: heavy
    modules scripts commonly import, such as numpy) imported by the fork server, so that
    every worker starts with them. The fork server ignores a module it cannot import. The
    list in force is the one given when the fork server starts."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*preload_modules, "ska_oso_oet.procedure._preload"])
    return ctx


class _WorkerPopen(popen_forkserver.Popen):
    """Starts a worker through the fork server without re-running the ``__main__`` module.

    multiprocessing's own start methods run the parent's main module again in each child (for
    functions defined there); a worker needs none of it, and the main module may be a Tango
    server, a notebook or a script without an ``if __name__ == "__main__"`` guard.
    """

    def _launch(self, process_obj: BaseProcess) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)  # type: ignore[attr-defined]
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        fds = self._fds  # type: ignore[attr-defined]
        self.sentinel, data_w = multiprocessing.forkserver.connect_to_new_process(fds)
        # the child watches a copy of the data pipe to learn that its parent has gone
        parent_w = os.dup(data_w)
        close_fds = util.close_fds  # type: ignore[attr-defined]
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(data_w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class _WorkerProcess(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: BaseProcess) -> _WorkerPopen:
        return _WorkerPopen(process_obj)


_live_lock = threading.Lock()
_live_supervisors = 0


def _reset_helpers_in_child() -> None:
    """After a plain fork (pytest --forked, a forking Tango test context), forget the
    parent's fork server and resource tracker: they are not this process's children."""
    server: Any = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is not None:
        if server._forkserver_alive_fd is not None:
            try:
                os.close(server._forkserver_alive_fd)
            except OSError:
                pass
        server._forkserver_pid = None
        server._forkserver_alive_fd = None
        server._forkserver_address = None
    tracker: Any = multiprocessing.resource_tracker._resource_tracker
    if getattr(tracker, "_pid", None) is not None:
        if tracker._fd is not None:
            try:
                os.close(tracker._fd)
            except OSError:
                pass
        tracker._pid = None
        tracker._fd = None


os.register_at_fork(after_in_child=_reset_helpers_in_child)


def _stop_helpers() -> None:
    """Stop the fork server and resource tracker once no supervisor needs them."""
    for helper in (
        multiprocessing.forkserver._forkserver,
        multiprocessing.resource_tracker._resource_tracker,
    ):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            try:
                stop()
            except Exception:
                LOGGER.debug("Could not stop %r", helper, exc_info=True)


def describe_exit(exitcode: int | None) -> str:
    """Words for a process's exit code as multiprocessing reports it."""
    if exitcode is None:
        return "exited with an unknown status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (signal {-exitcode})"
    return f"exited with exit code {exitcode}"


def _stat(pid: int) -> tuple[bytes, int] | None:
    """State letter and process group of ``pid`` from /proc; None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
    return fields[0], int(fields[2])


def _pid_alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != b"Z"


def _group_alive(pgid: int) -> bool:
    """True while a living (non-zombie) process is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):  # members may all be zombies: look closer
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat[1] == pgid and stat[0] != b"Z":
            return True
    return False


def _poll_until(done: Callable[[], bool], timeout: float, between: Callable[[], None]) -> bool:
    """Check ``done`` with a short, growing pause (``between`` runs in each) until it holds
    or ``timeout`` passes: the kernel is tearing processes down, which takes a moment."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not done():
        if time.monotonic() > deadline:
            return False
        between()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(pgid: int, extra: Iterable[psutil.Process], leader_alive: bool = True) -> None:
    """SIGKILL worker ``pgid``, its process group and the given processes (which may have left
    the group). While the worker has not been reaped it is named too: one that has only just
    started may not lead its group yet."""
    kills = [(os.killpg, pgid), (os.kill, pgid)] if leader_alive else [(os.killpg, pgid)]
    for kill, target in kills:
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in extra:
        try:
            proc.kill()  # psutil refuses if the PID now belongs to another process
        except psutil.Error:
            pass


def confirm_gone(pgid: int, extra: list[psutil.Process], timeout: float) -> bool:
    """Kill what is left of a reaped worker's process tree; wait until none of it lives."""

    def kill() -> None:
        kill_tree(pgid, extra, leader_alive=False)

    kill()
    return _poll_until(
        lambda: not _group_alive(pgid) and not any(_alive(p) for p in extra), timeout, kill
    )


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def pids_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of ``pids`` (already sent SIGKILL) is alive."""
    return _poll_until(lambda: not any(_pid_alive(p) for p in pids), timeout, lambda: None)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


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
        stop_grace: float = 3.0,
        spare_workers: int = 1,
        preload_modules: Iterable[str] = (),
    ) -> None:
        self._on_state = on_state
        self._on_pubsub = on_pubsub
        self.stop_grace = stop_grace
        self.spare_workers = spare_workers
        self._ctx = default_context(preload_modules)
        self._commands: deque[tuple[Any, ...]] = deque()
        self._post_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._workers: dict[int, _Worker] = {}
        self._spares: deque[_Worker] = deque()
        # procedures waiting for a process: id -> (messages to send it, stop requested)
        self._pending: dict[int, tuple[list[tuple[Any, ...]], list[bool]]] = {}
        self._launch_q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
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
        global _live_supervisors
        with _live_lock:
            _live_supervisors += 1
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
        script that asks for an environment gets an ENV message first.
        """
        self._post(("create", procedure_id, script, init_args, context, local_path, git_settings))

    def run(self, procedure_id: int, fn_name: str, run_args: Any, context: Any) -> None:
        w = self._workers.get(procedure_id)
        if w is not None and not w.stopping:
            # Straight down the worker's pipe: a message is not a process operation, and
            # this saves the hop through the supervisor thread.
            if w.send((wk.RUN, fn_name, run_args, context)):
                self._post(("flush", procedure_id))
        else:
            self._post(("run", procedure_id, fn_name, run_args, context))

    def stop(self, procedure_id: int) -> None:
        self._post(("stop", procedure_id))

    def shutdown(self, grace: float | None = None) -> None:
        """Stop every worker (as a Stop would, with ``grace`` seconds between SIGTERM and
        SIGKILL if given) and end the supervisor thread."""
        if self._thread.is_alive():
            self._post(("shutdown", grace))
            self._thread.join((grace if grace is not None else self.stop_grace) + 10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _post(self, command: tuple[Any, ...]) -> None:
        with self._post_lock:
            if self._closed:
                raise RuntimeError("The process supervisor has been shut down")
            self._commands.append(command)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    # -- launching, in a thread of its own so that the loop never waits for a fork -------------

    def _launch_loop(self) -> None:
        while True:
            pid = self._launch_q.get()
            if pid is None:
                return
            for attempt in range(LAUNCH_ATTEMPTS):
                try:
                    w = self._launch()
                except Exception as exc:
                    # e.g. the fork server died mid-launch; the next attempt starts a new one
                    LOGGER.warning("Could not start a worker process (%r)", exc)
                    error: BaseException = exc
                    time.sleep(0.05 * (attempt + 1))
                else:
                    self._post_quiet(("launched", pid, w, None))
                    break
            else:
                LOGGER.error("Could not start a worker process: %r", error)
                self._post_quiet(("launched", pid, None, error))

    def _post_quiet(self, command: tuple[Any, ...]) -> None:
        try:
            self._post(command)
        except RuntimeError:
            pass

    def _launch(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        name = f"oet-worker-{next(self._names)}"
        proc = _WorkerProcess(target=wk.worker_process_main, args=(child_conn, name), name=name)
        try:
            proc.start()
        finally:
            child_conn.close()
        assert proc.pid is not None
        sock = socket.fromfd(parent_conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        return _Worker(process=proc, conn=parent_conn, os_pid=proc.pid, sock=sock)

    def _request_launch(self, pid: int) -> None:
        self._launches += 1
        if pid < 0:
            self._spare_launches += 1
        self._launch_q.put(pid)

    # -- the loop ------------------------------------------------------------------------------

    def main_loop(self) -> None:
        """Serve commands, worker messages and worker exits until shut down."""
        try:
            self._loop()
        except Exception:  # pragma: no cover - a bug here must be loud
            LOGGER.exception("The process supervisor failed; stopping every worker")
            for w in list(self._workers.values()) + list(self._spares):
                kill_tree(w.os_pid, w.snapshot)
            raise
        finally:
            self._close()

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
                elif kind == "conn":
                    if mask & selectors.EVENT_WRITE and not w.flush():
                        self._want_write(w, False)
                    if mask & selectors.EVENT_READ:
                        self._drain(w)
                elif kind == "ended":
                    # The process has ended. When it said why (or was being stopped) nothing
                    # is missing; otherwise wait for the fork server to report its exit code.
                    self._drain(w)
                    if w.exit_intent is not None or w.stopping or w.sentinel_lost:
                        exited.append(w)
                    else:
                        self._selector.unregister(key.fileobj)
                elif w.pidfd is not None and not _readable(w.pidfd):
                    # The exit report came, but the worker lives: the fork server itself has
                    # gone (a script may kill its parent). Its pidfd will tell when it ends.
                    LOGGER.warning("The fork server went away; worker %s lives on", w.os_pid)
                    w.sentinel_lost = True
                    self._selector.unregister(key.fileobj)
                else:
                    exited.append(w)
            while self._commands:
                self._command(self._commands.popleft())
            for w in exited:
                self._reap(w)
            self._enforce_deadlines()
            if self._closing:
                if not self._workers and not self._spares and not self._launches:
                    return
            else:
                self._top_up_spares()

    def _timeout(self) -> float | None:
        deadlines = [w.deadline for w in self._workers.values() if w.deadline is not None]
        if self._spares_paused_until > time.monotonic():
            deadlines.append(self._spares_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _command(self, command: tuple[Any, ...]) -> None:
        tag = command[0]
        if tag == "create":
            _, pid, script, init_args, context, local_path, git_settings = command
            msgs: list[tuple[Any, ...]] = []
            if getattr(script, "create_env", False):
                msgs.append((wk.ENV, pid, script, git_settings))
            msgs.append((wk.LOAD, pid, script, init_args, context, local_path, git_settings))
            w = self._take_spare()
            if w is None:
                self._pending[pid] = (msgs, [False])
                self._request_launch(pid)
            else:
                self._assign(w, pid, msgs)
        elif tag == "flush":
            w = self._workers.get(command[1])
            if w is not None:
                self._want_write(w, w.flush())
        elif tag == "launched":
            self._adopt(command[1], command[2], command[3])
        elif tag == "run":
            _, pid, fn_name, run_args, context = command
            msg = (wk.RUN, fn_name, run_args, context)
            w = self._workers.get(pid)
            if w is not None and not w.stopping:
                self._send(w, msg)
            elif pid in self._pending:
                self._pending[pid][0].append(msg)
        elif tag == "stop":
            pid = command[1]
            w = self._workers.get(pid)
            if w is not None:
                self._begin_stop(w)
            elif pid in self._pending:
                self._pending[pid][1][0] = True
        elif tag == "shutdown":
            self._closing = True
            if command[1] is not None:
                self.stop_grace = command[1]
            self._launch_q.put(None)
            for _msgs, stop_requested in self._pending.values():
                stop_requested[0] = True
            for w in list(self._workers.values()):
                self._begin_stop(w)
            for spare in list(self._spares):
                self._begin_stop(spare)

    def _adopt(self, pid: int, w: _Worker | None, error: BaseException | None) -> None:
        self._launches -= 1
        if pid < 0:
            self._spare_launches -= 1
        if w is None:
            if pid >= 0:
                del self._pending[pid]
                self._report(
                    pid,
                    ProcedureState.FAILED,
                    {"stacktrace": f"Could not start a worker process: {error!r}"},
                )
            else:
                self._spares_paused_until = time.monotonic() + SPARE_RETRY_DELAY
            return
        self._selector.register(w.conn.fileno(), selectors.EVENT_READ, ("conn", w))
        self._selector.register(w.process.sentinel, selectors.EVENT_READ, ("exit", w))
        try:
            w.pidfd = os.pidfd_open(w.os_pid)
        except (AttributeError, OSError):
            pass  # the fork server's exit report (the sentinel) is enough, only slower
        else:
            self._selector.register(w.pidfd, selectors.EVENT_READ, ("ended", w))
        if pid < 0:
            self._spares.append(w)
            if self._closing:
                self._begin_stop(w)
            return
        msgs, stop_requested = self._pending.pop(pid)
        self._assign(w, pid, msgs)
        if stop_requested[0]:
            self._begin_stop(w)

    def _assign(self, w: _Worker, pid: int, msgs: list[tuple[Any, ...]]) -> None:
        w.procedure_id = pid
        for msg in msgs:
            self._send(w, msg)
        self._workers[pid] = w  # only now may other threads send to it directly

    def _take_spare(self) -> _Worker | None:
        while self._spares:
            w = self._spares.popleft()
            if w.process.is_alive():
                return w
        return None

    def _top_up_spares(self) -> None:
        if time.monotonic() < self._spares_paused_until:
            return  # starting spares failed just now: try again later
        while len(self._spares) + self._spare_launches < self.spare_workers:
            self._request_launch(-1)

    def _drain(self, w: _Worker) -> None:
        if not w.conn_open:
            return
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                w.conn_open = False
                self._selector.unregister(w.conn.fileno())
                w.close_sock()
                return
            except Exception:
                LOGGER.exception("Unreadable message from procedure %s", w.procedure_id)
                continue
            self._message(w, msg)

    def _message(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        tag = msg[0]
        if tag == wk.STATE:
            if w.procedure_id is not None:
                _, name, timestamp, info = msg
                self._report(w.procedure_id, ProcedureState[name], info, timestamp)
        elif tag == wk.PUBSUB:
            _, topic, kwargs = msg
            try:
                self._on_pubsub(w.procedure_id, topic, kwargs)
            except Exception:
                LOGGER.exception("Publishing %r from procedure %s failed", topic, w.procedure_id)
            self._broadcast(w, topic, kwargs)
        elif tag == wk.EXIT:
            w.exit_intent = (msg[1], msg[2])
            w.killed_by_worker = list(msg[3])

    def _broadcast(self, source: _Worker, topic: str, kwargs: dict[str, Any]) -> None:
        for other in self._workers.values():
            if other is not source and not other.stopping:
                self._send(other, (wk.PUBSUB, topic, kwargs), droppable=True)

    def _send(self, w: _Worker, msg: tuple[Any, ...], droppable: bool = False) -> None:
        if w.send(msg, droppable):
            self._want_write(w, True)

    def _want_write(self, w: _Worker, wanted: bool) -> None:
        """Watch the worker's pipe for room to write while its outbox holds bytes."""
        if w.conn_open and not w.reaped:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            self._selector.modify(w.conn.fileno(), events, ("conn", w))

    def _begin_stop(self, w: _Worker) -> None:
        if w.stopping:
            return
        w.stopping = True
        if w.procedure_id is None:  # a spare runs no script: no need to be gentle
            w.killed = True
            kill_tree(w.os_pid, [])
            return
        w.snapshot = _descendants(w.os_pid)
        try:
            os.kill(w.os_pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # already gone; the sentinel will report it
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
                w.snapshot += _descendants(w.os_pid)
                kill_tree(w.os_pid, w.snapshot)

    def _reap(self, w: _Worker) -> None:
        if w.reaped:
            return
        w.reaped = True
        self._drain(w)
        w.process.join(0)
        exitcode = w.process.exitcode
        if w.exit_intent is not None and not w.killed:
            # It ended itself after killing everything it had started: wait for those only.
            gone = pids_gone(w.killed_by_worker, KILL_CONFIRM_TIMEOUT)
        else:
            gone = confirm_gone(w.os_pid, w.snapshot, KILL_CONFIRM_TIMEOUT)
        self._forget(w)
        pid = w.procedure_id
        if pid is None:
            if not self._closing:
                LOGGER.warning("Spare worker %s %s", w.os_pid, describe_exit(exitcode))
            return
        stacktrace: str | None = None
        if not gone:
            state = ProcedureState.UNKNOWN
            stacktrace = f"Processes of worker {w.os_pid} survived SIGKILL"
        elif w.exit_intent is not None:
            state = ProcedureState[w.exit_intent[0]]
            stacktrace = w.exit_intent[1]
        elif w.stopping:
            state = ProcedureState.STOPPED
        else:
            state = ProcedureState.FAILED
            stacktrace = (
                f"The worker process (PID {w.os_pid}) {describe_exit(exitcode)} "
                "without reporting an end"
            )
        self._report(pid, state, {"stacktrace": stacktrace, "exitcode": exitcode})

    def _forget(self, w: _Worker) -> None:
        sentinel = None if w.sentinel_lost else w.process.sentinel
        for fileobj in (w.conn.fileno() if w.conn_open else None, sentinel):
            if fileobj is not None:
                try:
                    self._selector.unregister(fileobj)
                except (KeyError, ValueError):
                    pass
        w.conn_open = False
        w.close_sock()
        w.conn.close()
        if w.pidfd is not None:
            try:
                self._selector.unregister(w.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(w.pidfd)
            w.pidfd = None
        if w.procedure_id is not None:
            self._workers.pop(w.procedure_id, None)
        elif w in self._spares:
            self._spares.remove(w)
        try:
            w.process.close()
        except ValueError:
            pass

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
        global _live_supervisors
        with self._post_lock:
            self._closed = True
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._launch_q.put(None)
        with _live_lock:
            _live_supervisors -= 1
            last = _live_supervisors == 0
        if last:
            _stop_helpers()


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
