"""Processes as Linux's /proc shows them: the one walker of process trees in the OET.

A :class:`ProcessRef` names a process by PID *and* start time, so that killing it later never
hits an unrelated process that was given the same PID meanwhile. Imported by every worker, so
it stays light: standard library only.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class _Stat:
    state: bytes  # one letter: R, S, Z, ...
    pgrp: int
    start_time: int  # clock ticks after boot


def _stat(pid: int) -> _Stat | None:
    """What /proc/PID/stat says of ``pid``; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ")"
    fields = raw[raw.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
    return _Stat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


@dataclasses.dataclass(frozen=True)
class ProcessRef:
    """One process, as it was when it was seen."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat.start_time)

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        stat = _stat(self.pid)
        return stat is not None and stat.start_time == self.start_time and stat.state != b"Z"

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the PID still names this process (else do nothing)."""
        if self.alive():
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (of each of its threads)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def descendants(pid: int) -> list[ProcessRef]:
    """Every process below ``pid``, however deep."""
    found: list[ProcessRef] = []
    seen: set[int] = set()
    pending = children(pid)
    while pending:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        ref = ProcessRef.of(child)
        if ref is not None:
            found.append(ref)
            pending.extend(children(child))
    return found


def freeze_and_kill_descendants(pid: int) -> list[int]:
    """SIGKILL every process below ``pid``; return their PIDs.

    Each is stopped (SIGSTOP) before its children are looked for, so none can start more
    while the tree is walked; the walk repeats until it finds no one new.
    """
    seen: set[int] = set()
    while True:
        pending = [c for c in children(pid) if c not in seen]
        if not pending:
            break
        while pending:
            child = pending.pop()
            if child in seen:
                continue
            seen.add(child)
            try:
                os.kill(child, signal.SIGSTOP)
            except OSError:
                continue
            pending.extend(children(child))
        for child in seen:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
    return sorted(seen)


def pid_alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat.state != b"Z"


def group_alive(pgid: int) -> bool:
    """True while a living (non-zombie) process is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):  # its members may all be zombies: look closer
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat.pgrp == pgid and stat.state != b"Z":
            return True
    return False


def kill_group_and(pgid: int, extra: Iterable[ProcessRef], leader_alive: bool = True) -> None:
    """SIGKILL process group ``pgid`` and the ``extra`` processes (which may have left it).
    While the leader has not been reaped it is named too: one that has only just started may
    not lead its group yet."""
    kills = [(os.killpg, pgid), (os.kill, pgid)] if leader_alive else [(os.killpg, pgid)]
    for kill, target in kills:
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for ref in extra:
        ref.signal(signal.SIGKILL)


def poll_until(
    done: Callable[[], bool], timeout: float, between: Callable[[], None] = lambda: None
) -> bool:
    """Check ``done`` with a short, growing pause (``between`` runs in each) until it holds or
    ``timeout`` passes: the kernel takes a moment to tear processes down."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not done():
        if time.monotonic() > deadline:
            return False
        between()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True
