"""End to end: a real Tango database, the device server as users start it, the ``oet`` CLI.

The database (PyDatabaseds, sqlite in tmp_path) listens on a free 127.0.0.1 port; the devices
are registered from ``tango-db/oet.json`` with the functions ``make run`` uses; the server is
the ``ObservationExecutionTool`` console script. Every process is stopped by PID in a finally
block. Tests wait on change events or on output lines, never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
import tango

from ska_oso_oet import run
from ska_oso_oet.tango.ska import AdminMode, HealthState, LoggingLevel
from tests.helpers import (
    BIN,
    DEVICE,
    REPO,
    Oet,
    SummaryEvents,
    client_env,
    free_port,
    joined,
    prepare_request,
    start_request,
)

pytestmark = pytest.mark.tango

SCRIPTS = REPO / "scripts"
TIMEOUT = 60.0

WITH_INIT = [
    "CREATING",
    "IDLE",
    "LOADING",
    "IDLE",
    "INITIALISING",
    "READY",
    "RUNNING",
    "READY",
    "COMPLETE",
]
STOPPED_NO_INIT = ["CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING", "STOPPED"]


def uri(name: str) -> str:
    return f"file://{SCRIPTS / name}"


class Subscriber(SummaryEvents):
    """A client of its own, subscribed to procedureSummaries."""

    def __init__(self, trl: str) -> None:
        super().__init__(tango.DeviceProxy(trl))


@pytest.fixture
def subscribe(oet: Oet) -> Iterator[Callable[[], Subscriber]]:
    made: list[Subscriber] = []

    def make() -> Subscriber:
        made.append(Subscriber(oet.trl))
        return made[-1]

    yield make
    for s in made:
        s.close()


class OutputReader:
    """Collects a child's text output lines in a thread; waits for a line on a condition."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if predicate(line)), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            line = found()
        assert line is not None, f"no matching line in {self.lines}"
        return line

    def join(self, timeout: float = TIMEOUT) -> list[str]:
        self._thread.join(timeout)
        return list(self.lines)


def stop_child(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a child of this test by PID (no-op if it has already exited)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- (0) set points after a fresh registration --------------------------------------------------


def test_set_points_say_what_is_in_force_after_a_fresh_registration(oet: Oet) -> None:
    device = oet.proxy()
    for name, value in (
        ("loggingLevel", LoggingLevel.INFO),
        ("waitForQaReady", False),
        ("adminMode", AdminMode.ONLINE),
    ):
        attr = device.read_attribute(name)
        assert attr.value == value, name
        assert attr.w_value == value, name  # a panel's Apply writes back what it shows
    targets = device.read_attribute("loggingTargets")
    assert list(targets.value) == list(targets.w_value) == ["tango::logger"]


# -- (a) two subscribers see every state of a lifecycle driven through DeviceProxy ----------


def test_every_subscriber_sees_every_state_in_order(
    oet: Oet, subscribe: Callable[[], Subscriber]
) -> None:
    first, second = subscribe(), subscribe()
    device = oet.proxy()
    created = json.loads(device.Prepare(prepare_request(SCRIPTS / "hello.py", subarray_id=3)))
    pid = created["id"]
    assert created["state"] == "CREATING", oet.log_tail()
    first.wait_for(pid, "READY")

    started = json.loads(device.Start(start_request(pid)))
    assert started["id"] == pid
    first.wait_for(pid, "COMPLETE")
    second.wait_for(pid, "COMPLETE")

    for subscriber in (first, second):
        assert subscriber.states_seen(pid) == WITH_INIT, oet.log_tail()
        final = subscriber.latest(pid)
        assert [s for s, _ in final["history"]["process_states"]] == WITH_INIT
        times = [t for _, t in final["history"]["process_states"]]
        assert times == sorted(times)
        assert final["script_args"]["init"] == {"args": [], "kwargs": {"subarray_id": 3}}
        assert final["history"]["stacktrace"] is None
        assert subscriber.errors == []

    summary = json.loads(device.Summarise(json.dumps([pid])))
    assert [s["state"] for s in summary] == ["COMPLETE"]
    assert device.state() == tango.DevState.ON


# -- (b) the same through the oet command line, with `oet listen` watching --------------------


def test_cli_lifecycle_with_listen(oet: Oet) -> None:
    listen = subprocess.Popen(
        [
            str(
                BIN / "oet",
            ),
            "listen",
        ],
        env=oet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = OutputReader(listen.stdout)
        err = OutputReader(listen.stderr)
        out.wait_for(lambda line: line.startswith(f"Listening to {DEVICE}"))

        # a bare relative path is turned into a file:// URI
        prepared = oet.cli("--json", "prepare", "scripts/long_running.py", cwd=REPO)
        assert prepared.returncode == 0, prepared.stderr + oet.log_tail()
        summary = json.loads(prepared.stdout)
        pid = summary["id"]
        assert summary["state"] == "READY"  # prepare waits for READY (--wait 0: at once)
        assert summary["script"]["script_uri"] == uri("long_running.py")

        def listened(state: str) -> Callable[[str], bool]:
            return lambda line: line.split()[2:4] == [str(pid), state]

        out.wait_for(listened("READY"))
        started = oet.cli("start", str(pid), "--kwarg", "duration=120", "--kwarg", "interval=0.2")
        assert started.returncode == 0, started.stderr
        header, row = started.stdout.splitlines()
        assert header.split() == ["ID", "STATE", "SCRIPT", "LAST", "CHANGE"]
        assert row.split()[:2] == [str(pid), "RUNNING"]  # start waits for RUNNING
        out.wait_for(listened("RUNNING"))

        stopped = oet.cli("stop", str(pid))
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"Stop requested for procedure {pid}."
        out.wait_for(listened("STOPPED"))

        listed = oet.cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        mine = [s for s in json.loads(listed.stdout) if s["id"] == pid]
        assert [s["state"] for s in mine] == ["STOPPED"]
        assert [s for s, _ in mine[0]["history"]["process_states"]] == STOPPED_NO_INIT
        assert mine[0]["script_args"]["main"] == {
            "args": [],
            "kwargs": {"duration": 120, "interval": 0.2},
        }

        table = oet.cli("list")
        assert table.returncode == 0
        rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
        assert rows[str(pid)][1:3] == ["STOPPED", uri("long_running.py")]

        described = oet.cli("describe", str(pid))
        assert described.returncode == 0, described.stderr
        lines = described.stdout.splitlines()
        assert lines[0] == f"Procedure {pid}: STOPPED"
        assert "  main:        main(duration=120, interval=0.2)" in lines
        history = [line.split()[-1] for line in lines[lines.index("") + 2 :] if line]
        assert history[: len(STOPPED_NO_INIT)] == STOPPED_NO_INIT

        listen.send_signal(signal.SIGINT)
        assert listen.wait(TIMEOUT) == 0
        lines = out.join()
        assert err.join() == []
        mine_lines = [line.split() for line in lines[1:] if line.split()[2] == str(pid)]
        assert [fields[3] for fields in mine_lines] == STOPPED_NO_INIT
        assert all(fields[4] == uri("long_running.py") for fields in mine_lines)
    finally:
        stop_child(listen)


def test_cli_stop_with_abort_runs_the_abort_script(
    oet: Oet, subscribe: Callable[[], Subscriber]
) -> None:
    events = subscribe()
    prepared = oet.cli("--json", "prepare", uri("long_running.py"))
    assert prepared.returncode == 0, prepared.stderr
    pid = json.loads(prepared.stdout)["id"]
    events.wait_for(pid, "READY")
    assert oet.cli("start", str(pid)).returncode == 0
    events.wait_for(pid, "RUNNING")

    stopped = oet.cli("--json", "stop", str(pid), "--abort")
    assert stopped.returncode == 0, stopped.stderr
    (abort,) = json.loads(stopped.stdout)
    assert abort["script"]["script_uri"] == uri("abort.py")
    events.wait_for(abort["id"], "COMPLETE")
    assert events.latest(pid)["state"] == "STOPPED"
    # what the abort script printed is its procedure's output
    kept = json.loads(oet.proxy().GetOutput(json.dumps({"id": abort["id"], "since": 0})))
    assert any("abort: aborting" in line["text"] for line in kept["lines"]), kept


# -- (c) bad requests: one line on stderr, non-zero exit, the device carries on ----------------


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["start", "99999"], 1, "99999"),
        (["describe", "99999"], 1, "99999"),
        (["prepare", "file:///etc/passwd"], 1, "/etc/passwd"),
        (["prepare", "ftp://somewhere/x.py"], 2, "ftp"),
        (["stop"], 2, "id"),
        (["--device", "oet/nosuch/9", "list"], 1, "oet/nosuch/9"),
    ],
)
def test_cli_errors_are_one_line(oet: Oet, args: list[str], status: int, words: str) -> None:
    before = json.loads(oet.proxy().Summarise(""))
    result = oet.cli(*args)
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("oet: error: ")
    assert words in result.stderr
    assert oet.proxy().state() in (tango.DevState.ON, tango.DevState.RUNNING)
    after = json.loads(oet.proxy().Summarise(""))
    assert {s["id"] for s in before} <= {s["id"] for s in after}


# -- (d) memorized attributes: kept by the database, given back on the next start -------------


def test_memorized_attributes_survive_a_restart(oet: Oet) -> None:
    host, port = run.parse_tango_host(oet.tango_host)
    db = tango.Database(host, port)
    device = oet.proxy()
    assert device.waitForQaReady is False
    assert device.adminMode == AdminMode.ONLINE
    device.waitForQaReady = True
    device.adminMode = AdminMode.ENGINEERING
    try:
        # the database holds the written values as the attributes' __value properties
        stored = db.get_device_attribute_property(DEVICE, ["waitForQaReady", "adminMode"])
        assert list(stored["waitForQaReady"]["__value"]) == ["true"]
        assert list(stored["adminMode"]["__value"]) == [str(int(AdminMode.ENGINEERING))]

        oet.stop_server()
        oet.start_server()
        device = oet.proxy()
        assert device.waitForQaReady is True, oet.log_tail()
        assert device.adminMode == AdminMode.ENGINEERING, oet.log_tail()
        assert device.read_attribute("waitForQaReady").w_value is True
        assert device.read_attribute("adminMode").w_value == AdminMode.ENGINEERING
    finally:
        device.waitForQaReady = False
        device.adminMode = AdminMode.ONLINE
    assert device.waitForQaReady is False


# -- (d2) history that lasts: the server killed with SIGKILL, then started again ----------------


def stored_as(oet: Oet, pid: int, state: str) -> None:
    """Wait until the server's history store holds procedure ``pid`` in ``state``, read as
    another process would read it (SQLite, read-only)."""
    path = pathlib.Path(oet.env["OET_DATA_DIR"], "devices", DEVICE.replace("/", "."))
    store = path / "history.sqlite"
    deadline = time.monotonic() + TIMEOUT
    seen = None
    while time.monotonic() < deadline:
        if store.exists():
            with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT summary FROM summaries WHERE id = ?", (pid,)).fetchone()
            seen = json.loads(row[0])["state"] if row else None
            if seen == state:
                return
        time.sleep(0.02)  # polls a file another process writes: no event to wait on
    raise AssertionError(f"procedure {pid} never stored as {state} (last seen: {seen})")


def test_history_survives_kill_9_of_the_server(oet: Oet) -> None:
    events = Subscriber(oet.trl)
    device = oet.proxy()
    try:
        ended = json.loads(device.Prepare(uri("hello.py")))["id"]
        events.wait_for(ended, "READY")
        device.StartProcedure(ended)
        events.wait_for(ended, "COMPLETE")
        prepared = json.loads(device.Prepare(uri("hello.py")))["id"]
        events.wait_for(prepared, "READY")
        running = json.loads(device.Prepare(uri("long_running.py")))["id"]
        events.wait_for(running, "READY")
        device.StartProcedure(running)
        events.wait_for(running, "RUNNING")
    finally:
        events.close()
    # the store is written off the hot path: kill -9 may lose the last few milliseconds, which
    # on a busy machine can hold the RUNNING just seen; this test is of what was written
    stored_as(oet, running, "RUNNING")
    assert oet.server is not None
    old = psutil.Process(oet.server.pid)
    family = [old, *old.children(recursive=True)]  # its fork server and script workers
    assert len(family) >= 3, [p.cmdline() for p in family]
    oet.server.kill()  # SIGKILL: no clean-up of its own at all
    oet.server.wait(TIMEOUT)
    _, alive = psutil.wait_procs(family, timeout=TIMEOUT)
    assert alive == [], [p.cmdline() for p in alive]  # nothing of the old server is left

    oet.start_server()
    device = oet.proxy()
    kept = {s["id"]: s for s in json.loads(device.Summarise(""))}
    assert kept[ended]["state"] == "COMPLETE"
    # and what it printed is still there
    output = json.loads(device.GetOutput(json.dumps({"id": ended, "since": 0})))
    assert any("Hello, world" in line["text"] for line in output["lines"]), output
    assert [st for st, _ in kept[ended]["history"]["process_states"]][-1] == "COMPLETE"
    for pid, was in ((prepared, "READY"), (running, "RUNNING")):
        assert kept[pid]["state"] == "FAILED"
        assert f"stopped while this procedure was {was}" in kept[pid]["history"]["stacktrace"]
    assert device.lastFailure.startswith(f"{running} long_running.py: ServerStopped:")
    again = json.loads(device.Prepare(uri("hello.py")))["id"]
    assert again > max(kept)  # an ID never names two procedures
    device.StopProcedure(again)


# -- (d3) Init on a real server, with another client busy and a script ignoring SIGTERM --------

FINAL_STATES = {"COMPLETE", "STOPPED", "FAILED", "UNKNOWN"}


def test_init_of_a_busy_server_keeps_every_event_in_order(oet: Oet) -> None:
    events = Subscriber(oet.trl)
    device = oet.proxy()
    hello, stubborn = uri("hello.py"), f"file://{REPO / 'tests' / 'scripts' / 'stubborn.py'}"
    done = threading.Event()
    busy = threading.Event()
    host, port = run.parse_tango_host(oet.tango_host)
    db = tango.Database(host, port)
    db.put_device_property(
        DEVICE, {"ScriptRoots": [str(SCRIPTS), str(REPO / "tests" / "scripts")]}
    )
    device.Init()  # the new ScriptRoots
    first = json.loads(device.Prepare(hello))["id"]  # a barrier: the subscription carries
    device.StopProcedure(first)
    events.wait_for(first, FINAL_STATES)

    def client() -> None:
        proxy = oet.proxy()
        own = Subscriber(oet.trl)
        while not done.is_set():
            try:
                pid = json.loads(proxy.Prepare(hello))["id"]
                proxy.StopProcedure(pid)
            except tango.DevFailed:
                continue  # between two services during an Init: refused, fine
            own.wait_for(pid, FINAL_STATES)
            busy.set()
        own.close()

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        assert busy.wait(TIMEOUT)
        for _ in range(2):
            pid = json.loads(device.Prepare(stubborn))["id"]
            events.wait_for(pid, "READY")
            device.StartProcedure(pid)
            events.wait_for(pid, "RUNNING")
            device.Init()  # within the client's 3 s, though the script ignores SIGTERM
            assert events.wait_for(pid, FINAL_STATES)["state"] == "STOPPED"
    finally:
        done.set()
        worker.join(TIMEOUT)
        db.put_device_property(DEVICE, {"ScriptRoots": [str(SCRIPTS)]})
        device.Init()
    final = {s["id"]: s for s in json.loads(device.Summarise("")) if s["id"] > first}
    for pid, summary in final.items():
        events.wait_for(pid, FINAL_STATES)
        history = [st for st, _ in summary["history"]["process_states"]]
        folded = [st for i, st in enumerate(history) if i == 0 or history[i - 1] != st]
        assert events.states_seen(pid) == folded, (pid, events.states_seen(pid))
    assert events.errors == []
    events.close()


# -- (d4) the supervisor's death, in a real server process --------------------------------------

#: Put on the server's PYTHONPATH as sitecustomize: a fault injector for the test, not part of
#: the OET. When the trigger file appears it hands the service's supervisor a command that
#: makes its loop raise, as a bug in it would.
FAULT_INJECTOR = """
import gc, os, threading, time

def _watch(trigger):
    while not os.path.exists(trigger):
        time.sleep(0.05)
    from ska_oso_oet.procedure import supervisor
    from ska_oso_oet.procedure.application import ScriptExecutionService
    for obj in gc.get_objects():
        if isinstance(obj, ScriptExecutionService) and obj.healthy:
            obj._supervisor._post(supervisor._Stop([]))

trigger = os.environ.get("OET_TEST_BREAK_SUPERVISOR")
if trigger:  # in every Python process of the server; only the one with a service acts
    threading.Thread(target=_watch, args=(trigger,), daemon=True).start()
"""


def test_a_dead_supervisor_shows_fault_at_once_in_a_real_server(
    oet: Oet, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(FAULT_INJECTOR)
    trigger = tmp_path / "break-it-now"
    normal_env = oet.env
    oet.env = {
        **normal_env,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), normal_env.get("PYTHONPATH", "")]),
        "OET_TEST_BREAK_SUPERVISOR": str(trigger),
    }
    oet.stop_server()
    oet.start_server()
    try:
        device = oet.proxy()
        events = Subscriber(oet.trl)
        faulted = threading.Event()

        def on_state(event: Any) -> None:
            if not event.err and event.attr_value.value == tango.DevState.FAULT:
                faulted.set()

        device.subscribe_event("State", tango.EventType.CHANGE_EVENT, on_state)
        pid = json.loads(device.Prepare(uri("long_running.py")))["id"]
        events.wait_for(pid, "READY")
        device.StartProcedure(pid)
        events.wait_for(pid, "RUNNING")
        trigger.write_text("now")
        assert faulted.wait(TIMEOUT), oet.log_tail()  # pushed: no client polls for it
        failed = events.wait_for(pid, "FAILED")
        assert "process supervisor failed" in failed["history"]["stacktrace"]
        assert device.healthState == HealthState.FAILED
        assert "Init" in device.status()
        with pytest.raises(tango.DevFailed) as refused:
            device.Prepare(uri("hello.py"))
        assert refused.value.args[0].reason == "OET_NotReady"
        trigger.unlink()
        device.Init()
        assert device.state() == tango.DevState.ON
        again = json.loads(device.Prepare(uri("hello.py")))["id"]
        events.wait_for(again, "READY")
        device.StopProcedure(again)
        events.close()
    finally:
        oet.env = normal_env
        oet.stop_server()
        oet.start_server()


# -- (d5) a real server leaves no orphan when a worker is killed from outside -----------------
# (300 live procedures at once are tested on the service, tests/test_never_blind.py: through a
# real server each database would add a minute to the suite)


def test_a_real_server_leaves_no_orphan_of_a_worker_killed_from_outside(oet: Oet) -> None:
    host, port = run.parse_tango_host(oet.tango_host)
    db = tango.Database(host, port)
    db.put_device_property(
        DEVICE, {"ScriptRoots": [str(SCRIPTS), str(REPO / "tests" / "scripts")]}
    )
    device = oet.proxy()
    device.Init()  # the new ScriptRoots
    events = Subscriber(oet.trl)
    try:
        daemon_script = f"file://{REPO / 'tests' / 'scripts' / 'daemonizer.py'}"
        pid = json.loads(device.Prepare(daemon_script))["id"]
        events.wait_for(pid, "READY")
        device.Start(start_request(pid, "main", 600))
        events.wait_for(pid, "RUNNING")
        assert oet.server is not None
        below = []
        for proc in psutil.Process(oet.server.pid).children(recursive=True):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    below.append((proc, proc.ppid(), os.getsid(proc.pid)))
            except (psutil.Error, OSError):
                pass  # gone meanwhile (the daemon's intermediate parents)
        # the daemon: in a session of its own, adopted by its worker (a child subreaper)
        daemons = [p for p, parent, sid in below if sid != os.getsid(parent)]
        assert len(daemons) == 1, [(p.pid, parent, sid) for p, parent, sid in below]
        worker = psutil.Process(daemons[0].ppid())
        worker.kill()  # from outside: the worker cleans up nothing
        assert events.wait_for(pid, FINAL_STATES)["state"] == "FAILED"
        _, alive = psutil.wait_procs(daemons, timeout=TIMEOUT)
        assert alive == []
    finally:
        events.close()
        db.put_device_property(DEVICE, {"ScriptRoots": [str(SCRIPTS)]})
        device.Init()


# -- (e) the typed attributes, by events, through a lifecycle, a failure and an Abort ----------

FACE = ["procedureChange", "procedureIds", "procedureStates", "procedureScripts",
        "runningProcedureIds", "lastFailure"]  # fmt: skip


class FaceEvents:
    """A client of its own subscribed to every typed attribute: the latest value of each, and
    every procedureChange, as events bring them."""

    def __init__(self, trl: str) -> None:
        self.proxy = tango.DeviceProxy(trl)
        self.latest: dict[str, Any] = {}
        self.changes: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._ids = [
            self.proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, self._callback)
            for name in FACE
        ]
        joined(self.proxy)

    def _callback(self, event: Any) -> None:
        with self._cond:
            if event.err:
                self.errors.append(event.errors[0].desc)
                return
            name = event.attr_value.name
            value = event.attr_value.value
            if name.lower() == "procedurechange":
                if value:
                    self.changes.append(json.loads(value))
                value = json.loads(value) if value else None
            elif value is None:
                value = [] if name.lower() != "lastfailure" else ""
            elif not isinstance(value, str):
                value = list(value)
            self.latest[name.lower()] = value
            self._cond.notify_all()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.latest), TIMEOUT), (
                f"never {what}: {self.latest}"
            )

    def states(self, pid: int) -> list[str]:
        with self._cond:
            return [c["state"] for c in self.changes if c["id"] == pid]

    def close(self) -> None:
        for event_id in self._ids:
            self.proxy.unsubscribe_event(event_id)


def test_typed_attributes_by_events_through_a_lifecycle_a_failure_and_an_abort(
    oet: Oet,
) -> None:
    host, port = run.parse_tango_host(oet.tango_host)
    db = tango.Database(host, port)
    db.put_device_property(DEVICE, {"MaxRunning": ["2"]})
    oet.stop_server()
    oet.start_server()
    face = FaceEvents(oet.trl)
    device = oet.proxy()
    try:
        pid = json.loads(device.Prepare(uri("hello.py")))["id"]  # a bare URI
        face.wait(lambda v: pid in v.get("procedureids", []), "held")
        face.wait(lambda v: (v.get("procedurechange") or {}).get("state") == "READY", "READY")
        device.StartProcedure(pid)
        face.wait(lambda v: (v.get("procedurechange") or {}).get("state") == "COMPLETE", "done")
        assert face.states(pid) == [
            "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY", "RUNNING", "READY",
            "COMPLETE",
        ]  # fmt: skip

        # each attribute's own event follows procedureChange's
        def shown(v: dict[str, Any]) -> bool:
            ids, states = v.get("procedureids", []), v.get("procedurestates", [])
            return pid in ids and len(states) == len(ids) and states[ids.index(pid)] == "COMPLETE"

        face.wait(shown, "COMPLETE in procedureStates")
        index = face.latest["procedureids"].index(pid)
        assert face.latest["procedurescripts"][index] == uri("hello.py")

        failing = json.loads(device.Prepare(uri("failing.py")))["id"]
        face.wait(lambda v: failing in v.get("procedureids", []), "held")
        face.wait(lambda v: "READY" in face.states(failing), "READY")
        device.StartProcedure(failing)
        face.wait(lambda v: v.get("lastfailure", "").startswith(f"{failing} "), "failed")
        assert face.latest["lastfailure"] == (
            f"{failing} failing.py: ObservationError: failing.py fails on purpose: the dish "
            "refused to move"
        )

        sleepers = [json.loads(device.Prepare(uri("long_running.py")))["id"] for _ in range(2)]
        face.wait(lambda v: all("READY" in face.states(p) for p in sleepers), "both READY")
        for sleeper in sleepers:
            device.StartProcedure(sleeper)
        face.wait(lambda v: sorted(v.get("runningprocedureids", [])) == sleepers, "both run")
        aborts = json.loads(device.Abort())
        assert len(aborts) == 2
        face.wait(lambda v: v.get("runningprocedureids") == [], "none running")
        for sleeper in sleepers:
            face.wait(lambda v, p=sleeper: face.states(p)[-1:] == ["STOPPED"], "STOPPED")
        for abort in aborts:
            face.wait(lambda v, a=abort["id"]: face.states(a)[-1:] == ["COMPLETE"], "aborted")
        # the same button from a shell
        another = json.loads(device.Prepare(uri("long_running.py")))["id"]
        face.wait(lambda v: "READY" in face.states(another), "READY")
        device.StartProcedure(another)
        face.wait(lambda v: v.get("runningprocedureids") == [another], "running")
        pressed = oet.cli("abort")
        assert pressed.returncode == 0, pressed.stderr
        assert pressed.stdout.splitlines()[0] == "Stopping; abort procedures started:"
        face.wait(lambda v: face.states(another)[-1:] == ["STOPPED"], "STOPPED")
        again = oet.cli("abort")
        assert again.stdout.strip() == "Nothing was running: nothing to abort.", again.stderr
        assert face.errors == []
    finally:
        face.close()
        db.put_device_property(DEVICE, {"MaxRunning": ["1"]})
        oet.stop_server()
        oet.start_server()


# -- (f) what Taranta sees: the typed attributes through TangoGQL --------------------------------

#: The Python of the venv `make test` builds for TangoGQL (it cannot share the project's).
TANGOGQL_PYTHON = pathlib.Path(
    os.environ.get("TANGOGQL_PYTHON") or REPO / ".venv-tangogql" / "bin" / "python"
)


@pytest.fixture
def tangogql(oet: Oet, tmp_path: pathlib.Path) -> Iterator[str]:
    """TangoGQL on a free loopback port, talking to the test's Tango database; its URL."""
    if not TANGOGQL_PYTHON.is_file():
        reason = (
            f"{TANGOGQL_PYTHON} not found: `make test` builds it (make .venv-tangogql/.installed)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(f"not run through TangoGQL: {reason}")
    port = free_port()
    env = {**oet.env, "TANGOGQL_NO_AUTH": "true"}
    proc = subprocess.Popen(
        [
            str(TANGOGQL_PYTHON),
            "-m",
            "uvicorn",
            "tangogql.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=tmp_path,  # no config.json of anyone's
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        err = OutputReader(proc.stderr)
        err.wait_for(lambda line: "Uvicorn running on" in line or "startup complete" in line)
        yield f"http://127.0.0.1:{port}/db"
    finally:
        stop_child(proc)


def test_a_tangogql_client_shows_the_running_procedure_and_the_last_failure(
    oet: Oet, tangogql: str
) -> None:
    import httpx

    device = oet.proxy()
    events = Subscriber(oet.trl)
    try:
        failing = json.loads(device.Prepare(uri("failing.py")))["id"]
        events.wait_for(failing, "READY")
        device.StartProcedure(failing)
        events.wait_for(failing, "FAILED")
        running = json.loads(device.Prepare(uri("long_running.py")))["id"]
        events.wait_for(running, "READY")
        device.StartProcedure(running)
        events.wait_for(running, "RUNNING")

        names = ["runningProcedureIds", "lastFailure", "procedureIds", "procedureStates"]
        query = {
            "query": "query($names: [String]!) { attributes(fullNames: $names) "
            "{ name label datatype dataformat value } }",
            "variables": {"names": [f"{DEVICE}/{n}" for n in names]},
        }
        reply = httpx.post(tangogql, json=query, timeout=TIMEOUT)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert "errors" not in body, body
        got = {a["name"].lower(): a for a in body["data"]["attributes"]}
        assert got["runningprocedureids"]["value"] == [running]
        assert got["runningprocedureids"]["dataformat"] == "SPECTRUM"
        assert got["runningprocedureids"]["label"] == "Running procedures"
        assert got["lastfailure"]["value"] == (
            f"{failing} failing.py: ObservationError: failing.py fails on purpose: the dish "
            "refused to move"
        )
        ids, states = got["procedureids"]["value"], got["procedurestates"]["value"]
        assert states[ids.index(running)] == "RUNNING"
        assert states[ids.index(failing)] == "FAILED"
    finally:
        device.Abort()
        events.close()


# -- the launcher itself (`make run`) ----------------------------------------------------------


@dataclass
class Launcher:
    proc: subprocess.Popen[str]
    out: OutputReader
    err: OutputReader
    children: list[psutil.Process] = field(default_factory=list)


@pytest.fixture
def launcher(tmp_path: pathlib.Path) -> Iterator[Callable[..., Launcher]]:
    made: list[Launcher] = []

    def start(*args: str) -> Launcher:
        env = client_env(f"127.0.0.1:{free_port()}")
        env["OET_DATA_DIR"] = str(tmp_path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ska_oso_oet.run", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        made.append(Launcher(proc, OutputReader(proc.stdout), OutputReader(proc.stderr)))
        return made[-1]

    yield start
    for item in made:
        stop_child(item.proc)
        for child in item.children:  # only if the launcher failed to stop them itself
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()


def test_launcher_serves_devices_and_stops_everything(
    launcher: Callable[..., Launcher],
) -> None:
    item = launcher("--devices", "2")
    item.out.wait_for(lambda line: line.startswith("Ctrl-C stops"))
    host = item.out.wait_for(lambda line: "TANGO_HOST=" in line).split("TANGO_HOST=")[1]
    assert item.out.wait_for(lambda line: "device(s):" in line).split(": ")[1] == (
        "oet/executor/1, oet/executor/2"
    )
    direct = psutil.Process(item.proc.pid).children()
    assert sorted(" ".join(c.cmdline()[1:]).split("/")[-1] for c in direct) == [
        "ObservationExecutionTool 1",
        "ObservationExecutionTool 2",
        "PyDatabaseds --host 127.0.0.1 --port " + host.split(":")[1] + " 2",
    ]
    # with their script workers: all of them must be gone once the launcher has stopped
    item.children = psutil.Process(item.proc.pid).children(recursive=True)
    for n in (1, 2):
        tango.DeviceProxy(f"tango://{host}/oet/executor/{n}").ping()
    props = tango.Database(*host.split(":")).get_device_property("oet/executor/2", "ScriptRoots")
    assert list(props["ScriptRoots"]) == [str(SCRIPTS)]

    item.proc.send_signal(signal.SIGTERM)
    assert item.proc.wait(TIMEOUT) == 0, item.err.join()
    _, alive = psutil.wait_procs(item.children, timeout=TIMEOUT)
    assert alive == []
    assert item.out.join()[-1].startswith("Stopped the Tango database")


def test_launcher_exits_non_zero_when_a_child_dies(launcher: Callable[..., Launcher]) -> None:
    item = launcher()
    item.out.wait_for(lambda line: line.startswith("Ctrl-C stops"))
    item.children = psutil.Process(item.proc.pid).children(recursive=True)
    (server,) = [c for c in item.children if "ObservationExecutionTool" in " ".join(c.cmdline())]
    server.kill()  # a grandchild this test started, by PID
    assert item.proc.wait(TIMEOUT) == 1
    errors = item.err.join()
    assert any("exited unexpectedly" in line for line in errors), errors
    _, alive = psutil.wait_procs(item.children, timeout=TIMEOUT)
    assert alive == []


def test_launcher_stops_everything_when_its_terminal_closes(tmp_path: pathlib.Path) -> None:
    """Closing the terminal window of `make run`: the terminal goes (writes fail with EIO) and
    SIGHUP arrives. Everything the launcher started must stop, its database included."""
    import pty
    import select

    master, slave = pty.openpty()
    env = client_env(f"127.0.0.1:{free_port()}")
    env["OET_DATA_DIR"] = str(tmp_path)
    env["OET_REST_PORT"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ska_oso_oet.run"],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    children: list[psutil.Process] = []
    try:
        text = b""
        deadline = time.monotonic() + TIMEOUT
        while b"Ctrl-C stops" not in text:  # read the terminal until the banner is shown
            assert time.monotonic() < deadline and proc.poll() is None, text.decode()
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                text += os.read(master, 65536)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("PyDatabaseds" in " ".join(c.cmdline()) for c in children)
        os.close(master)  # the window closes: the terminal is gone...
        master = -1
        proc.send_signal(signal.SIGHUP)  # ...and the kernel's SIGHUP arrives
        assert proc.wait(TIMEOUT) == 0
        _, alive = psutil.wait_procs(children, timeout=TIMEOUT)
        assert alive == [], [c.cmdline() for c in alive]
    finally:
        if master >= 0:
            os.close(master)
        stop_child(proc)
        for child in children:  # only if the launcher failed to stop them itself
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
