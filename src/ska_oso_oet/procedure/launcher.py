"""The fork server: the one process that forks workers, and the server's handle on it.

A Tango device server is multi-threaded (omniORB), and ``fork()`` from a multi-threaded process
may deadlock the child. So workers are forked by a small single-threaded process started
fresh with :mod:`subprocess` (``python -m ska_oso_oet.procedure.launcher``): it imports the
worker module and the operator's ``PreloadModules``, freezes its heap (``gc.freeze``) so that
the workers it forks share those pages untouched, and then only forks.

Protocol. The server and the fork server share one Unix socket. For each worker the server
makes a socket pair (the worker's channel) and a pipe (its *status pipe*), and sends a request
with the worker's end of each (``SCM_RIGHTS``). The fork server forks; the child runs
:func:`~ska_oso_oet.procedure.worker.worker_process_main` on its channel. The fork server
writes the child's PID down the status pipe at once and, when it has reaped the child, its
exit code (negative: the signal that killed it), then closes the pipe. End of file on a status
pipe without an exit code means the fork server itself has gone; end of file on the request
socket tells the fork server that the server has gone, and it exits.

Only the standard library is used, and nothing private of CPython's.
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

LOGGER = logging.getLogger(__name__)

_STATUS = struct.Struct("!q")
#: Seconds the server waits for the fork server to start, or to fork a worker.
LAUNCH_TIMEOUT = 30.0
_MAX_NAME = 200


class LaunchError(RuntimeError):
    """A worker could not be started."""


class StatusPipe:
    """The server's end of one worker's status pipe: readable once the worker has been
    reaped (its exit code follows) or the fork server has gone (end of file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""
        self.exitcode: int | None = None
        self.lost = False  # end of file before an exit code: the fork server went away

    def fileno(self) -> int:
        return self.fd

    def read_pid(self, timeout: float) -> int:
        value = self._read_one(timeout)
        if value is None:
            raise LaunchError("the fork server went away before it reported the worker")
        return value

    def read_exit(self) -> None:
        """Read the exit code, or note that none will come; call when readable."""
        value = self._read_one(0)
        if value is None:
            self.lost = True
        else:
            self.exitcode = value

    def _read_one(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while len(self._buf) < _STATUS.size:
            left = max(0.0, deadline - time.monotonic())
            if not readable(self.fd, left):
                if timeout == 0:
                    return None
                raise LaunchError(f"the fork server did not answer within {timeout:.0f} s")
            data = os.read(self.fd, _STATUS.size - len(self._buf))
            if not data:
                return None
            self._buf += data
        (value,) = _STATUS.unpack(self._buf[: _STATUS.size])
        self._buf = self._buf[_STATUS.size :]
        return value

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ForkServer:
    """The server's handle on one fork server process."""

    def __init__(self, preload: Iterable[str]) -> None:
        self.preload = [m for m in preload if all(p.isidentifier() for p in m.split("."))]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), *self.preload],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._ready = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def spawn(
        self, name: str, output_fds: tuple[int, int, int] | None = None
    ) -> tuple[int, socket.socket, StatusPipe]:
        """Fork a worker; return its PID, the server's end of its channel and its status
        pipe. Raises :class:`LaunchError` if the fork server has gone.

        ``output_fds``: the write ends of the pipes that become the worker's fd 1 and 2, and
        of the one its logging records go to (see :mod:`.output`); the caller closes them."""
        channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = os.pipe()
        status = StatusPipe(status_r)
        try:
            request = name.encode()[:_MAX_NAME]
            fds = array.array("i", [theirs.fileno(), status_w, *(output_fds or ())])
            with self._lock:
                if not self._ready:  # the first request waits for the preloading to finish
                    self._wait_ready()
                try:
                    self._sock.sendmsg(
                        [struct.pack("!H", len(request)), request],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())],
                    )
                except OSError as exc:
                    raise LaunchError(f"the fork server went away ({exc})") from None
        except BaseException:
            channel.close()
            status.close()
            raise
        finally:
            theirs.close()
            os.close(status_w)
        try:
            pid = status.read_pid(LAUNCH_TIMEOUT)
        except BaseException:
            channel.close()
            status.close()
            raise
        return pid, channel, status

    def _wait_ready(self) -> None:
        ready = self._sock.recv(1) if readable(self._sock.fileno(), LAUNCH_TIMEOUT) else b""
        if ready != b"R":
            raise LaunchError("the fork server did not start")
        self._ready = True

    def close(self, timeout: float = 5.0) -> None:
        """End the fork server (its workers must have been stopped already)."""
        self._sock.close()
        if os.getpid() != self._owner:
            return  # a forked copy of the owner: the process is not ours to wait for
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def forget(self) -> None:
        """In a forked child of the owner: drop the handle without touching the process."""
        with contextlib.suppress(OSError):
            self._sock.close()


# -- shared by every supervisor of a process ----------------------------------------------------

_shared_lock = threading.Lock()
_shared: ForkServer | None = None
_users = 0


def acquire(preload: Iterable[str]) -> None:
    """Note one more user of this process's fork server (started on first use)."""
    global _users
    with _shared_lock:
        _users += 1
    if preload:
        get(preload)  # start it now: the preload list in force is the first one given


def get(preload: Iterable[str] = ()) -> ForkServer:
    """This process's fork server, started (again) if it is not running."""
    global _shared
    with _shared_lock:
        if _shared is not None and not _shared.alive():
            LOGGER.warning("The fork server (PID %s) went away; starting a new one", _shared.pid)
            preload = _shared.preload
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = ForkServer(preload)
        return _shared


def release() -> None:
    """One user fewer; the last one ends the fork server."""
    global _shared, _users
    with _shared_lock:
        _users -= 1
        if _users > 0 or _shared is None:
            return
        server, _shared = _shared, None
    server.close()


def _forget_in_child() -> None:
    """After a plain fork (pytest --forked, a forking Tango test context) the parent's fork
    server is not this process's: start afresh."""
    global _shared, _users, _shared_lock
    _shared_lock = threading.Lock()
    if _shared is not None:
        _shared.forget()
    _shared = None
    _users = 0


os.register_at_fork(after_in_child=_forget_in_child)


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` is readable within ``timeout`` seconds."""
    return bool(_ready([fd], max(0, int(timeout * 1000))))


def _ready(fds: list[int], timeout_ms: int | None) -> list[int]:
    """Which of ``fds`` are readable within ``timeout_ms`` (None: wait until one is).
    poll(), not select(): a server watching hundreds of workers has descriptors above
    select()'s limit of 1024. (An interrupted poll is retried by Python itself, PEP 475.)"""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(timeout_ms)]


# -- the fork server process ----------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    """Fork a worker for each request; report PIDs and exit codes; end with the server."""
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
    status_of: dict[int, int] = {}  # worker PID -> write end of its status pipe
    sock.sendall(b"R")
    try:
        while True:
            ready = _ready([sock.fileno(), wake_r], None)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(status_of)
            if sock.fileno() in ready:
                if not _handle_request(sock, status_of, (wake_r, wake_w)):
                    return  # the server has gone
    finally:
        for pid in status_of:  # workers exit when their channel closes; make sure
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _reap(status_of: dict[int, int]) -> None:
    reaped = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped = True
        fd = status_of.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(status)))
            os.close(fd)
    if reaped:
        _kill_orphans(status_of)


def _kill_orphans(status_of: dict[int, int]) -> None:
    """Kill every child of this fork server that is not a worker, with all below it.

    The fork server is a child subreaper: when a worker dies without killing what its script
    started (killed from outside, crashed), those processes are re-parented here, whatever
    session or group they put themselves in. Each is stopped (SIGSTOP) before its children
    are looked for, so that none can fork more while the tree is walked; a process that forked
    just before is found at the next reaping, as its parent's death wakes this loop again.
    """
    from ska_oso_oet.procedure import proctree

    for child in proctree.children(os.getpid()):
        if child in status_of:
            continue
        try:
            os.kill(child, signal.SIGSTOP)
        except OSError:
            continue
        proctree.freeze_and_kill_descendants(child)
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def _handle_request(
    sock: socket.socket, status_of: dict[int, int], own_fds: tuple[int, int]
) -> bool:
    fds = array.array("i")
    try:
        data, ancdata, _flags, _addr = sock.recvmsg(
            2 + _MAX_NAME, socket.CMSG_LEN(5 * fds.itemsize)
        )
    except OSError:
        return False
    if not data:
        return False
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if len(fds) not in (2, 5):
        for fd in fds:
            os.close(fd)
        return True  # not a request this server makes: ignore it
    channel_fd, status_fd, *output_fds = fds
    name = data[2:].decode(errors="replace")
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            sock.close()
            for fd in (*own_fds, status_fd, *status_of.values()):
                os.close(fd)
            log_fd = None
            if output_fds:  # the script's stdout and stderr are the server's to read
                os.dup2(output_fds[0], 1)
                os.dup2(output_fds[1], 2)
                os.close(output_fds[0])
                os.close(output_fds[1])
                log_fd = output_fds[2]
            from ska_oso_oet.procedure import worker

            worker.worker_process_main(channel_fd, name, log_fd)
        finally:
            os._exit(70)
    os.close(channel_fd)
    for fd in output_fds:
        os.close(fd)
    os.write(status_fd, _STATUS.pack(pid))
    status_of[pid] = status_fd
    return True


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the server to handle
    # the worker, then the operator's modules (a git script's environment code is imported
    # only by the workers that need it: every module preloaded here costs each worker's exit)
    own = ["ska_oso_oet.procedure.worker", "ska_oso_oet.procedure.output"]
    for name in [*own, *argv[1:]]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing preload module is skipped, not fatal
            print(f"OET fork server: cannot preload {name}: {exc!r}", file=sys.stderr)
    gc.freeze()  # workers then share these pages instead of copying them
    from ska_oso_oet.procedure import worker

    worker.become_subreaper()  # what a dead worker's script started comes here, to be killed
    _serve(sock)


if __name__ == "__main__":
    main(sys.argv[1:])
