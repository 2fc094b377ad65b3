"""Helpers shared by the test modules (fixtures live in conftest.py): the test scripts, a
service-side history waiter, a local git repository of scripts, a Tango client that records
procedureSummaries events, the ``oet`` command line, and a server on a Tango database as
``make run`` serves it."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import tango

from ska_oso_oet import run
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureSummary,
    StartProcessCommand,
)
from ska_oso_oet.procedure.domain import (
    FileSystemScript,
    GitScript,
    ProcedureInput,
    ProcedureState,
)
from ska_oso_oet.procedure.gitmanager import GitArgs

SCRIPTS = pathlib.Path(__file__).parent / "scripts"
S = ProcedureState


def script(name: str) -> FileSystemScript:
    """A FileSystemScript for one of the test scripts."""
    return FileSystemScript(f"file://{SCRIPTS / name}")


TIMEOUT = 20


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ABORT = "def init(subarray_id=None):\n    pass\n\n\ndef main():\n    pass\n"


def device_properties(tmp_path: pathlib.Path, abort: str = ABORT, **more: Any) -> dict[str, Any]:
    """Properties of a test device: the test scripts and ``tmp_path`` as ScriptRoots, and an
    abort script of its own in ``tmp_path`` (its text: ``abort``); ``more`` adds or
    overrides."""
    (tmp_path / "abort.py").write_text(abort)
    return {
        "ScriptRoots": [str(SCRIPTS), str(tmp_path)],
        "AbortScript": f"file://{tmp_path}/abort.py",
        "StopGracePeriod": 1.0,
        **more,
    }


def prepare_request(script: str | pathlib.Path, *args: Any, **init: Any) -> str:
    """The JSON of a Prepare of a filesystem script, ``init`` called with ``args`` and
    ``init``: ``script`` is a path, or the name of one of the test scripts."""
    path = script if isinstance(script, pathlib.Path) else SCRIPTS / script
    return json.dumps(
        {
            "script": {"script_type": "filesystem", "script_uri": f"file://{path}"},
            "script_args": {"init": {"args": list(args), "kwargs": init}},
        }
    )


def start_request(
    pid: int, fn: str = "main", *args: Any, force_start: bool = False, **kwargs: Any
) -> str:
    """The JSON of a Start of ``fn(*args, **kwargs)`` of procedure ``pid``."""
    request: dict[str, Any] = {
        "id": pid,
        "fn_name": fn,
        "run_args": {"args": list(args), "kwargs": kwargs},
    }
    if force_start:
        request["force_start"] = True
    return json.dumps(request)


def joined(proxy: tango.DeviceProxy) -> None:
    """Return once events from the device reach this client.

    subscribe_event returns with the attribute's value, but the event channel (ZeroMQ) may
    join a moment later, and an event pushed in between never arrives: a test counting
    every state would miss the first. Writing loggingLevel with its own value pushes an
    event of it; once one arrives, the channel carries the device's events.
    """
    arrived = threading.Event()
    first = [True]

    def callback(event: Any) -> None:
        if first[0]:  # the value at subscription time comes synchronously
            first[0] = False
            return
        arrived.set()

    event_id = proxy.subscribe_event("loggingLevel", tango.EventType.CHANGE_EVENT, callback)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not arrived.is_set():  # the write that wakes it may itself be missed: repeat
            assert time.monotonic() < deadline, "no event reaches this client"
            proxy.write_attribute("loggingLevel", proxy.read_attribute("loggingLevel").value)
            arrived.wait(0.2)
    finally:
        proxy.unsubscribe_event(event_id)


class SummaryEvents:
    """Subscribes ``proxy`` to procedureSummaries CHANGE events and keeps every value, parsed,
    in order; waits for them on a condition."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.proxy = proxy
        self.events: list[list[dict[str, Any]]] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._id = proxy.subscribe_event(
            "procedureSummaries", tango.EventType.CHANGE_EVENT, self._callback
        )
        joined(proxy)

    def _callback(self, event: Any) -> None:
        with self._cond:
            if event.err:
                self.errors.append(f"{event.errors[0].reason}: {event.errors[0].desc}")
            else:
                self.events.append(json.loads(event.attr_value.value or "[]"))
            self._cond.notify_all()

    def states_seen(self, pid: int) -> list[str]:
        """The state of ``pid`` in each event, consecutive repeats folded."""
        seen: list[str] = []
        with self._cond:
            for event in self.events:
                for s in event:
                    if s["id"] == pid and (not seen or seen[-1] != s["state"]):
                        seen.append(s["state"])
        return seen

    def latest(self, pid: int) -> dict[str, Any]:
        """The summary of ``pid`` in the newest event that holds it."""
        with self._cond:
            for event in reversed(self.events):
                for s in event:
                    if s["id"] == pid:
                        return s
        raise KeyError(pid)

    def wait_for(
        self, pid: int, states: str | Iterable[str], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """Wait until an event shows ``pid`` in one of ``states``; return that summary."""
        wanted = {states} if isinstance(states, str) else set(states)

        def reached() -> dict[str, Any] | None:
            for event in self.events:
                for s in event:
                    if s["id"] == pid and s["state"] in wanted:
                        return s
            return None

        with self._cond:
            ok = self._cond.wait_for(lambda: reached() is not None, timeout)
            assert ok, f"procedure {pid} never reached {wanted}: {self.states_seen(pid)}"
            found = reached()
            assert found is not None
            return found

    def wait_until(self, predicate: Callable[[list[list[dict[str, Any]]]], bool]) -> None:
        """Wait until ``predicate(events)`` holds."""
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), TIMEOUT)

    def close(self) -> None:
        try:
            self.proxy.unsubscribe_event(self._id)
        except tango.DevFailed:
            pass


def states(summary: ProcedureSummary) -> list[str]:
    return [s.name for s, _ in summary.history.process_states]


class HistoryWaiter:
    """Waits, on the service's change notifications, for a history that ends a given way."""

    def __init__(self, ses, pid: int, suffix: list[str]) -> None:
        self.ses, self.pid, self.suffix = ses, pid, suffix
        self.event = threading.Event()

    def _listener(self, summary: ProcedureSummary) -> None:
        if summary.id == self.pid and states(summary)[-len(self.suffix) :] == self.suffix:
            self.event.set()

    def __enter__(self) -> HistoryWaiter:
        self.ses.add_listener(self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        self.ses.remove_listener(self._listener)

    def wait(self) -> None:
        assert self.event.wait(TIMEOUT), f"history of {self.pid} never ended {self.suffix}"


def run_to_end(ses, name, init_args=None, fn="main", run_args=None):
    summary = ses.prepare(PrepareProcessCommand(script(name), init_args or ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(summary.id, fn, run_args or ProcedureInput()))
    return ses.wait_for_state(summary.id, [S.COMPLETE, S.FAILED, S.STOPPED], TIMEOUT)


USES_DEP = """
from pubsub import pub


def init():
    import localdep  # installed into this repository's environment only

    global VALUE
    VALUE = localdep.VALUE


def main():
    pub.sendMessage("test.git", msg_src="git", value=VALUE)
"""

PLAIN = """
from pubsub import pub


def main():
    pub.sendMessage("test.git", msg_src="git", value={value!r})
"""


def git(cwd: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=OET Test", "-c", "user.email=oet@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Repo:
    """A local repository: main with two commits, and a feature branch."""

    def __init__(self, root: pathlib.Path, requirement: str) -> None:
        self.path = root / "observing-scripts"
        self.path.mkdir()
        git(self.path, "init", "--quiet", "--initial-branch=main")
        (self.path / "scripts").mkdir()
        (self.path / "scripts" / "uses_dep.py").write_text(USES_DEP)
        (self.path / "requirements.txt").write_text(requirement + "\n")
        self.commit("scripts/plain.py", PLAIN.format(value="first"))
        self.first = git(self.path, "rev-parse", "HEAD")
        self.commit("scripts/plain.py", PLAIN.format(value="second"))
        self.second = git(self.path, "rev-parse", "HEAD")
        git(self.path, "checkout", "--quiet", "-b", "feature")
        self.commit("scripts/plain.py", PLAIN.format(value="feature"))
        self.feature = git(self.path, "rev-parse", "HEAD")
        git(self.path, "checkout", "--quiet", "main")
        self.url = f"file://{self.path}"

    def commit(self, path: str, text: str) -> None:
        (self.path / path).parent.mkdir(parents=True, exist_ok=True)
        (self.path / path).write_text(text)
        git(self.path, "add", "-A")
        git(self.path, "commit", "--quiet", "-m", f"change {path}")

    def script(self, path: str, create_env: bool = False, **git_args: str) -> GitScript:
        return GitScript(
            f"git://{path}", git_args=GitArgs(git_repo=self.url, **git_args), create_env=create_env
        )


# -- the oet command line, and a server on a Tango database as `make run` serves it -----------

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
#: The device ``make run`` registers, and how long its server may take to start or answer.
DEVICE = "oet/executor/1"
SERVER_TIMEOUT = 60.0


def run_oet(address: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The ``oet`` command line, run as a user runs it, on the device at ``address``."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("OET_DEVICE", None)
    return subprocess.run(
        [str(BIN / "oet"), "--device", address, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def client_env(tango_host: str) -> dict[str, str]:
    """The environment of a client (or a server) of the database at ``tango_host``."""
    env = run.child_env(tango_host)  # TANGO_HOST, and ORBendPoint on loopback
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OET_DEVICE"] = DEVICE
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Oet:
    """A device server registered in a Tango database, and the ``oet`` command line for it."""

    tango_host: str
    env: dict[str, str]
    server_log: pathlib.Path
    server: subprocess.Popen[bytes] | None = None

    def start_server(self) -> None:
        with open(self.server_log, "ab") as log:
            self.server = run.start_server(1, self.env, log=log)
        run.wait_for_device(DEVICE, SERVER_TIMEOUT, tango_host=self.tango_host, proc=self.server)

    def stop_server(self) -> None:
        if self.server is not None:
            run.stop_process(self.server)
            self.server = None

    @property
    def trl(self) -> str:
        return f"tango://{self.tango_host}/{DEVICE}"

    def proxy(self) -> tango.DeviceProxy:
        return tango.DeviceProxy(self.trl)

    def log_tail(self) -> str:
        text = self.server_log.read_text(errors="replace") if self.server_log.exists() else ""
        return "\n--- server log (tail) ---\n" + text[-4000:]

    def cli(self, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "oet"), *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=SERVER_TIMEOUT,
            check=False,
        )
