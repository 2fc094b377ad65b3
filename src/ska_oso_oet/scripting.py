"""What a script can ask of the OET while it runs: pause points and progress.

Import it from any script, file or git, with or without an environment of its own::

    from ska_oso_oet.scripting import checkpoint, report_progress

    def main(steps=10, context=None):
        for i in range(steps):
            checkpoint(f"step {i}")          # an operator's Pause takes effect here
            report_progress(i / steps, f"step {i} of {steps}")
            do_one_step(i)
        report_progress(1.0, "done")
        return {"steps": steps}             # becomes the summary's "result"

- :func:`checkpoint` marks a place where the script may safely wait: nothing is half
  commanded there. It returns at once unless an operator asked for a pause (the ``Pause``
  command, ``oet pause ID``): then the procedure becomes PAUSED and the call blocks until
  ``Resume`` (the procedure is RUNNING again and the call returns) or ``Stop`` (the call raises
  the stop at once, as a stop raises anywhere else in the script, so ``finally`` blocks run).
  **A script that never calls checkpoint() cannot be paused**: a Pause stays pending and the
  script simply runs on to its end. Call it from any thread the script started; while the
  procedure is paused every thread that reaches a checkpoint waits there.
- :func:`report_progress` sets the summary's ``progress``; cheap enough for a tight loop:
  the latest value is kept and sent at most :data:`PROGRESS_INTERVAL` apart.

Outside a procedure (the script run by hand, or its tests) both return at once and do
nothing. The procedure's ID is in the ``ScriptContext`` (``context.procedure_id``).

This module is imported by every worker process before the script, so it stays light:
standard library only.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

__all__ = ["PROGRESS_INTERVAL", "checkpoint", "report_progress"]

#: Least seconds between two progress updates sent by one procedure (the latest value wins).
PROGRESS_INTERVAL = 0.1
#: Longest progress message kept, in characters (a longer one is cut).
MAX_MESSAGE = 1000
#: Seconds between two looks at the stop flag by a paused checkpoint that missed the wake-up.
STOP_POLL = 0.5


def checkpoint(name: str | None = None) -> None:
    """A safe place to pause: returns at once, unless a pause was requested; then the
    procedure is PAUSED here until Resume (or Stop, which raises here at once).

    :param name: where the script is (e.g. ``"before slew"``), for the operator: it is
        logged when the procedure pauses there
    """
    agent = _agent
    if agent is not None and agent.pause_requested:
        agent.wait_here(name)


def report_progress(fraction: float | None = None, message: str = "") -> None:
    """Tell the operator how far the script is: the summary's ``progress`` becomes
    ``{"fraction": fraction, "message": message, "time": <now>}``.

    :param fraction: how much is done, from 0 to 1 (a value outside is clamped), or None
        when only a message is given
    :param message: a few words on what the script is doing (cut at 1000 characters)
    """
    # the common case (a float in range, a short str) costs two type checks
    if fraction is not None and not (type(fraction) is float and 0.0 <= fraction <= 1.0):
        fraction = _fraction(fraction)
    if type(message) is not str or len(message) > MAX_MESSAGE:
        message = _message(message)
    agent = _agent
    if agent is not None:
        agent.progress(fraction, message)


def _fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number from 0 to 1 or None, not {fraction!r}")
    if not math.isfinite(fraction):
        raise ValueError(f"fraction must be a number from 0 to 1, not {fraction!r}")
    return min(1.0, max(0.0, float(fraction)))


def _message(message: object) -> str:
    text = message if isinstance(message, str) else str(message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


# -- the worker's side -------------------------------------------------------------------------

StateSender = Callable[[str, str | None], None]
ProgressSender = Callable[[float | None, str, float], None]


class Agent:
    """The worker's end of :func:`checkpoint` and :func:`report_progress` (one per worker
    process, installed with :func:`install`). Not for scripts.

    Pause requests and resumes arrive on the worker's message thread; checkpoints are
    reached on the script's threads. ``send_state(name, checkpoint_name)`` reports PAUSED or
    RUNNING, ``send_progress`` a progress value; both write to the supervisor.
    """

    def __init__(
        self,
        send_state: StateSender,
        send_progress: ProgressSender,
        stop_exception: type[BaseException],
    ) -> None:
        self._send_state = send_state
        self._send_progress = send_progress
        self._stop_exception = stop_exception
        self._pid = os.getpid()  # a process the script forks has no worker to resume it
        # pausing; an RLock, so that the SIGTERM handler may take it in the main thread
        self._cond = threading.Condition(threading.RLock())
        self._running = False  # a started function has not returned
        self.pause_requested = False  # read without the lock by checkpoint(): the fast path
        self._paused = False
        self._stopping = False
        # progress: the latest value (one assignment, atomic: no lock on the fast path), the
        # last one sent, and whether the flusher has a value to send
        self._latest: tuple[float | None, str, float] | None = None
        self._sent: tuple[float | None, str, float] | None = None
        self._dirty = False
        self._progress = threading.Condition(threading.Lock())
        self._sending = threading.Lock()  # held while a value is taken and sent
        self._flusher: threading.Thread | None = None

    # -- from the worker's message thread --

    def request_pause(self) -> None:
        """Pause at the next checkpoint (ignored unless a started function runs)."""
        with self._cond:
            if self._running and not self._paused and not self._stopping:
                self.pause_requested = True

    def resume(self) -> None:
        """Cancel a pending pause, or let the paused checkpoints return (RUNNING again)."""
        with self._cond:
            self._unpause()

    def _unpause(self) -> None:
        """Under the lock: no pause is pending, and the paused checkpoints (if any) return,
        the procedure RUNNING again."""
        self.pause_requested = False
        if self._paused:
            self._paused = False
            self._send_state("RUNNING", None)
            self._cond.notify_all()

    # -- from the worker's main thread --

    def begin_run(self) -> None:
        """A started function is about to run: checkpoints may pause from now on."""
        with self._cond:
            self._running = True
            self.pause_requested = self._paused = False

    def end_run(self) -> None:
        """The started function returned: a pending pause is void; if threads it left are
        paused they go on (RUNNING, so that READY follows a RUNNING as it must)."""
        with self._cond:
            self._running = False
            self._unpause()
        self.flush()

    def interrupt(self) -> None:
        """A stop: every paused checkpoint raises the stop exception (the main thread's is
        raised by the signal handler itself). Called from the SIGTERM handler: it never waits
        long for the lock (a thread holding it may wait for the main thread), and the waiting
        threads look at the flag now and then anyway."""
        self._stopping = True
        self.pause_requested = False
        if self._cond.acquire(timeout=0.1):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()

    # -- from the script's threads --

    def wait_here(self, name: str | None) -> None:
        if os.getpid() != self._pid:
            return  # in a process the script forked: only the worker's own threads pause
        with self._cond:
            if not self.pause_requested or not self._running:
                return
            if not self._paused:
                self._paused = True
                self._send_state("PAUSED", name)
            while self._paused and not self._stopping:
                self._cond.wait(STOP_POLL)
            if self._stopping:
                raise self._stop_exception("stopped while paused")

    def progress(self, fraction: float | None, message: str) -> None:
        self._latest = (fraction, message, time.time())
        if not self._dirty:  # else the flusher sends the latest value when its time comes
            self._wake()

    def _wake(self) -> None:
        with self._progress:
            self._dirty = True
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="oet-progress", daemon=True
                )
                self._flusher.start()
            else:
                self._progress.notify()

    def flush(self, blocking: bool = True) -> None:
        """Send the value that waits, now (before the function's end is reported); not
        ``blocking``: only if no other send is under way (at the worker's exit)."""
        if not self._sending.acquire(blocking):
            return
        try:
            # dirty is cleared before the value is read: a value set after the read finds
            # it clear and wakes the flusher again, so that no value is ever left unsent
            self._dirty = False
            latest = self._latest
            if latest is not None and latest is not self._sent:
                self._sent = latest
                self._send_progress(*latest)
        finally:
            self._sending.release()

    def _flush_loop(self) -> None:
        while True:
            with self._progress:
                while not self._dirty:
                    self._progress.wait()
            self.flush()
            time.sleep(PROGRESS_INTERVAL)


_agent: Agent | None = None


def install(agent: Agent | None) -> None:
    """Make ``agent`` the one that :func:`checkpoint` and :func:`report_progress` use."""
    global _agent
    _agent = agent
