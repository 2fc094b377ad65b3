"""Pause and resume at checkpoints, progress and results: real workers, a real device.

The scripts (tests/scripts/pausing.py) take their steps when the test sends them a byte on a
socket (:class:`Gate`), so that the test knows where each pause happens; every wait is on a
state change or an event, with a deadline.
"""

from __future__ import annotations

import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet import scripting
from ska_oso_oet.procedure import messages, strictjson
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureSummary,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.domain import FileSystemScript, ProcedureInput, ProcedureState
from ska_oso_oet.procedure.errors import ProcedureStateError
from ska_oso_oet.tango.device import ObservationExecutionTool
from tests.helpers import (
    SCRIPTS,
    TIMEOUT,
    SummaryEvents,
    device_properties,
    prepare_request,
    run_oet,
    script,
    start_request,
    states,
)

S = ProcedureState
FINAL = [S.COMPLETE, S.STOPPED, S.FAILED]
LOADED = ["CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY"]


class Gate:
    """The test's end of the socket that paces a script: each byte lets it take one step."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def step(self, after: bytes = b"x") -> None:
        """One step; ``after`` b"p": a pause was just asked for, b"r": a resume."""
        if self.conn is None:
            self.conn, _ = self.server.accept()
        self.conn.sendall(after)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()


def prepared(ses, fn_args: dict[str, Any] | None = None, name: str = "pausing.py", **init: Any):
    summary = ses.prepare(PrepareProcessCommand(script(name), ProcedureInput(**init)))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    return summary.id


def started(ses, pid: int, fn: str = "main", **kwargs: Any) -> ProcedureSummary:
    """Start ``fn``; return once the history shows it RUNNING (it may have ended since)."""
    before = len(ses.summarise([pid])[0].history.process_states)
    seen = threading.Event()

    def listener(summary: ProcedureSummary) -> None:
        if summary.id == pid and "RUNNING" in states(summary)[before:]:
            seen.set()

    ses.add_listener(listener)
    try:
        ses.start(StartProcessCommand(pid, fn, ProcedureInput(**kwargs)))
        assert seen.wait(TIMEOUT), f"procedure {pid} never ran {fn}"
    finally:
        ses.remove_listener(listener)
    return ses.summarise([pid])[0]


def final(ses, pid: int) -> ProcedureSummary:
    return ses.wait_for_state(pid, FINAL, TIMEOUT)


class Watch:
    """Every summary the service announces for one procedure, in order (its listeners)."""

    def __init__(self, ses, pid: int) -> None:
        self.ses, self.pid = ses, pid
        self.summaries: list[ProcedureSummary] = []
        ses.add_listener(self._on)

    def _on(self, summary: ProcedureSummary) -> None:
        if summary.id == self.pid:
            self.summaries.append(summary)

    def close(self) -> None:
        self.ses.remove_listener(self._on)


# -- pause and resume ---------------------------------------------------------------------------


def test_pause_at_a_checkpoint_then_resume(ses, gate):
    pid = prepared(ses, port=gate.port)
    started(ses, pid, port=gate.port, n=2)
    asked = ses.pause(pid)
    assert asked.state is S.RUNNING and asked.pause_pending
    assert ses.summarise([pid])[0].pause_pending
    gate.step(b"p")  # the script goes to its checkpoint, the pause waiting for it there
    paused = ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    assert not paused.pause_pending
    assert paused.progress is None  # it paused before its first report
    resumed = ses.resume(pid)
    assert resumed.state in (S.PAUSED, S.RUNNING)
    running = ses.wait_for_state(pid, S.RUNNING, TIMEOUT)
    assert states(running)[-3:] == ["RUNNING", "PAUSED", "RUNNING"]
    gate.step()
    done = final(ses, pid)
    assert done.state is S.COMPLETE, done.history.stacktrace
    assert states(done) == [
        *LOADED, "RUNNING", "PAUSED", "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip
    times = [t for _, t in done.history.process_states]
    assert times == sorted(times)
    assert done.result == {"steps": 2, "procedure_id": pid, "init_id": pid}
    assert done.progress is not None
    assert (done.progress["fraction"], done.progress["message"]) == (1.0, "step 2 of 2")


def test_pause_twice_in_a_row_and_two_checkpoints_in_a_row(ses, gate):
    pid = prepared(ses, port=gate.port)
    started(ses, pid, port=gate.port, n=3)
    for _ in range(2):  # two pauses, at two checkpoints
        ses.pause(pid)
        gate.step(b"p")
        ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
        ses.resume(pid)
        ses.wait_for_state(pid, S.RUNNING, TIMEOUT)
    gate.step()
    done = final(ses, pid)
    assert states(done)[len(LOADED) :] == [
        "RUNNING", "PAUSED", "RUNNING", "PAUSED", "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip

    # checkpoint(); checkpoint(): one pause stops at the first only
    gate2 = Gate()
    try:
        pid = prepared(ses, port=gate2.port)
        started(ses, pid, "twice", port=gate2.port)
        ses.pause(pid)
        gate2.step(b"p")
        ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
        ses.resume(pid)
        ses.wait_for_state(pid, S.RUNNING, TIMEOUT)
        gate2.step()
        done = ses.wait_for_state(pid, S.READY, TIMEOUT)
    finally:
        gate2.close()
    assert done.result == "twice"
    assert states(done)[len(LOADED) :] == ["RUNNING", "PAUSED", "RUNNING", "READY"]
    ses.stop(StopProcessCommand(pid))
    assert states(final(ses, pid))[-2:] == ["READY", "STOPPED"]


def test_a_pause_requested_then_cancelled_never_pauses(ses, gate):
    pid = prepared(ses, port=gate.port)
    started(ses, pid, port=gate.port, n=1)
    assert ses.pause(pid).pause_pending
    assert ses.pause(pid).pause_pending  # asking again changes nothing
    cancelled = ses.resume(pid)
    assert cancelled.state is S.RUNNING and not cancelled.pause_pending
    gate.step(b"r")  # the checkpoint comes after the cancel: it returns at once
    done = final(ses, pid)
    assert done.state is S.COMPLETE
    assert states(done)[len(LOADED) :] == ["RUNNING", "READY", "COMPLETE"]
    assert not done.pause_pending


def test_a_pending_pause_ends_with_the_function(ses, gate):
    """A function that returns before any checkpoint: the pause is void, the next function
    starts unpaused."""
    pid = prepared(ses, port=gate.port)
    started(ses, pid, "returns", kind="none")
    done = ses.wait_for_state(pid, S.READY, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="READY, not RUNNING"):
        ses.pause(pid)
    assert not done.pause_pending
    started(ses, pid, "steps", port=gate.port, n=1)
    ses.pause(pid)
    ses.resume(pid)
    gate.step(b"r")
    assert ses.wait_for_state(pid, S.READY, TIMEOUT).result["steps"] == 1
    ses.stop(StopProcessCommand(pid))
    assert final(ses, pid).state is S.STOPPED


@pytest.mark.parametrize("where", ["main", "threaded"])
def test_stop_while_paused_interrupts_the_checkpoint_at_once(make_service, gate, tmp_path, where):
    ses = make_service(stop_grace=30.0)  # a stop that waited for the grace would show
    marker = tmp_path / "marker"
    pid = prepared(ses, port=gate.port)
    started(ses, pid, where, port=gate.port, n=2, marker_file=str(marker))
    ses.pause(pid)
    gate.step(b"p")
    ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    t0 = time.monotonic()
    assert ses.stop(StopProcessCommand(pid)) == []
    done = final(ses, pid)
    assert time.monotonic() - t0 < 5.0
    assert done.state is S.STOPPED
    assert states(done)[len(LOADED) :] == ["RUNNING", "PAUSED", "STOPPED"]
    assert marker.read_text() == "cleaned up"  # the stop raised in the script: finally ran


def test_stop_while_paused_runs_the_abort_script(make_service, gate, tmp_path):
    abort = tmp_path / "abort.py"
    abort.write_text(
        "def init(subarray_id=None):\n    pass\n\n\ndef main():\n    return 'aborted'\n"
    )
    ses = make_service(abort_script=FileSystemScript(f"file://{abort}"))
    pid = prepared(ses, port=gate.port, subarray_id=2)
    started(ses, pid, port=gate.port)
    ses.pause(pid)
    gate.step(b"p")
    ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    (aborting,) = ses.stop(StopProcessCommand(pid, run_abort=True))
    assert final(ses, pid).state is S.STOPPED
    aborted = final(ses, aborting.id)
    assert aborted.state is S.COMPLETE
    assert aborted.result == "aborted"
    assert states(ses.summarise([pid])[0])[-3:] == ["RUNNING", "PAUSED", "STOPPED"]


def test_pause_and_resume_are_refused_unless_they_make_sense(ses, gate):
    summary = ses.prepare(
        PrepareProcessCommand(script("pausing.py"), ProcedureInput(port=gate.port, in_init=True))
    )
    pid = summary.id
    ses.wait_for_state(pid, S.INITIALISING, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="INITIALISING, not RUNNING"):
        ses.pause(pid)  # the script is in init: a checkpoint there has nothing to pause
    gate.step()  # init calls checkpoint(): it returns at once
    ses.wait_for_state(pid, S.READY, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="READY, not PAUSED"):
        ses.resume(pid)
    started(ses, pid, port=gate.port, n=1)
    with pytest.raises(ProcedureStateError, match="no pause is pending"):
        ses.resume(pid)
    ses.pause(pid)
    gate.step(b"p")
    ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="already PAUSED"):
        ses.pause(pid)
    ses.stop(StopProcessCommand(pid))
    done = final(ses, pid)
    with pytest.raises(ProcedureStateError, match="STOPPED, not RUNNING"):
        ses.pause(pid)
    with pytest.raises(ProcedureStateError, match="STOPPED, not PAUSED"):
        ses.resume(pid)
    assert states(done) == [*LOADED, "RUNNING", "PAUSED", "STOPPED"]


def test_a_paused_procedure_counts_as_running(make_service, gate):
    ses = make_service(max_running=1)
    pid = prepared(ses, port=gate.port)
    other = prepared(ses, port=None)
    started(ses, pid, port=gate.port)
    ses.pause(pid)
    gate.step(b"p")
    ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="at most 1 may run"):
        ses.start(StartProcessCommand(other, "main", ProcedureInput(n=1)))
    with pytest.raises(ProcedureStateError, match="already running"):
        ses.start(StartProcessCommand(pid, "main", ProcedureInput()))
    ses.stop(StopProcessCommand(pid))
    final(ses, pid)
    started(ses, other, n=1)
    assert final(ses, other).state is S.COMPLETE


def test_a_script_that_never_calls_checkpoint_runs_on(ses, gate):
    pid = prepared(ses)
    started(ses, pid, "no_checkpoint", port=gate.port)
    assert ses.pause(pid).pause_pending
    gate.step(b"p")
    done = ses.wait_for_state(pid, S.READY, TIMEOUT)
    assert done.result == "ran on"
    assert states(done)[len(LOADED) :] == ["RUNNING", "READY"] and not done.pause_pending
    ses.stop(StopProcessCommand(pid))
    final(ses, pid)


def test_the_example_scan_pauses_between_steps(ses):
    example = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "scan_steps.py"
    summary = ses.prepare(
        PrepareProcessCommand(FileSystemScript(f"file://{example}"), ProcedureInput(subarray_id=3))
    )
    pid = summary.id
    ses.wait_for_state(pid, S.READY, TIMEOUT)
    started(ses, pid, steps=20, dwell=0.05)
    ses.pause(pid)
    paused = ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
    # paused between two steps (before the first one, if the pause came that early)
    assert paused.progress is None or paused.progress["fraction"] < 1.0
    ses.resume(pid)
    done = final(ses, pid)
    assert done.state is S.COMPLETE, done.history.stacktrace
    assert states(done)[len(LOADED) :] == ["RUNNING", "PAUSED", "RUNNING", "READY", "COMPLETE"]
    assert done.result["procedure_id"] == pid and done.result["subarray_id"] == 3
    assert len(done.result["offsets"]) == 20
    assert done.progress is not None and done.progress["message"] == "done: 20 steps"


def test_a_process_the_script_forks_never_pauses(ses, gate):
    pid = prepared(ses)
    started(ses, pid, "forks", port=gate.port)
    ses.pause(pid)
    gate.step(b"p")
    ses.wait_for_state(pid, S.PAUSED, TIMEOUT)  # the worker's own checkpoint, after the child's
    ses.resume(pid)
    done = ses.wait_for_state(pid, S.READY, TIMEOUT)
    assert done.result == "forked", done.history.stacktrace
    assert states(done)[len(LOADED) :] == ["RUNNING", "PAUSED", "RUNNING", "READY"]
    ses.stop(StopProcessCommand(pid))
    final(ses, pid)


# -- progress, result, procedure_id --------------------------------------------------------------


def test_progress_is_rate_limited_and_keeps_the_latest_value(ses):
    pid = prepared(ses)
    watch = Watch(ses, pid)
    try:
        started(ses, pid, "progress_loop", n=100_000)
        done = ses.wait_for_state(pid, S.READY, TIMEOUT)
        ran = done.history.process_states[-1][1] - done.history.process_states[-2][1]
        updates = [s for s in watch.summaries if s.state is S.RUNNING and s.progress]
    finally:
        watch.close()
    ses.stop(StopProcessCommand(pid))
    assert done.result == 100_000
    assert done.progress is not None
    assert (done.progress["fraction"], done.progress["message"]) == (1.0, "done")
    # one update at most every PROGRESS_INTERVAL (and the first and last ones)
    assert 1 <= len(updates) <= ran / scripting.PROGRESS_INTERVAL + 3
    fractions = [u.progress["fraction"] for u in updates if u.progress]
    assert fractions == sorted(fractions)


def test_the_return_value_becomes_the_result_bounded(ses):
    pid = prepared(ses)
    expected = {
        "json": {"answer": 42, "list": [1, 2.5, "x", None, True]},
        "object": "{1, 2}",
        "nan": "nan",
        "none": None,
        "[1, 2]": [1, 2],
    }
    for kind, value in expected.items():
        started(ses, pid, "returns", kind=kind)
        assert ses.wait_for_state(pid, S.READY, TIMEOUT).result == value
    for kind in ("big", "bigobject"):
        started(ses, pid, "returns", kind=kind)
        result = ses.wait_for_state(pid, S.READY, TIMEOUT).result
        assert isinstance(result, str)
        assert len(json.dumps(result)) <= messages.MAX_RESULT
        assert "[cut: the result is" in result
    # a new start forgets the previous result until its function returns
    started(ses, pid, "returns", kind="json")
    assert ses.wait_for_state(pid, S.READY, TIMEOUT).result == expected["json"]
    ses.stop(StopProcessCommand(pid))
    final(ses, pid)


def test_bound_result_and_report_progress_outside_a_procedure():
    assert messages.bound_result({"a": [1]}) == {"a": [1]}
    assert messages.bound_result(float("inf")) == "inf"
    nested: list[Any] = []
    for _ in range(strictjson.MAX_DEPTH - 1):
        nested = [nested]
    assert messages.bound_result(nested) == nested  # as deep as a request may be: kept
    for _ in range(5000):
        nested = [nested]
    deep = messages.bound_result(nested)  # its repr, or why there is none (3.11: too deep)
    assert deep.startswith("[[[[") or deep.startswith("<list object; its repr failed")
    assert messages.bound_result("\ud800") == "'\\ud800'"  # not a character: its repr
    cut = messages.bound_result("é" * 50_000)  # JSON escapes it to 6 characters each
    assert len(json.dumps(cut)) <= messages.MAX_RESULT and "[cut:" in cut

    class Bad:
        def __repr__(self):
            raise RuntimeError("no")

    assert "its repr failed" in messages.bound_result(Bad())
    # no worker: both return at once and do nothing
    scripting.checkpoint("anywhere")
    scripting.report_progress(0.5, "half")
    with pytest.raises(TypeError):
        scripting.report_progress("half")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scripting.report_progress(float("nan"))


def test_a_worker_that_forges_progress_is_refused():
    good = messages.encode_from_worker(messages.Progress(0.5, "ok", 1.0))[4:]
    assert messages.decode_from_worker(good) == messages.Progress(0.5, "ok", 1.0)
    for doc in (
        {"kind": "progress", "fraction": 2.0, "message": "", "time": 1.0},
        {"kind": "progress", "fraction": True, "message": "", "time": 1.0},
        {"kind": "progress", "fraction": None, "message": "x" * 5000, "time": 1.0},
        {"kind": "result", "value": "x" * (messages.MAX_RESULT + 100)},
    ):
        with pytest.raises(messages.ProtocolError):
            messages.decode_from_worker(json.dumps(doc).encode())


# -- git scripts, with an environment of their own ----------------------------------------------

STEPPER = """
from ska_oso_oet.scripting import checkpoint, report_progress
import localdep  # from this repository's own environment


def main(context=None):
    report_progress(0.5, "half way")
    checkpoint("middle")
    return {"value": localdep.VALUE, "procedure_id": context.procedure_id}
"""


@pytest.mark.parametrize("create_env", [False, True])
def test_git_scripts_import_the_scripting_module(make_service, repo, tmp_path, create_env):
    text = STEPPER if create_env else STEPPER.replace("localdep.VALUE", "None")
    if not create_env:  # no environment: localdep is not installed
        text = text.replace("import localdep", "")
    repo.commit("scripts/stepper.py", text)
    ses = make_service(
        allowed_git_repos=[f"file://{tmp_path}/*"], git_cache_dir=str(tmp_path / "cache")
    )
    summary = ses.prepare(
        PrepareProcessCommand(repo.script("scripts/stepper.py", create_env=create_env))
    )
    ses.wait_for_state(summary.id, S.READY, 120)
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    done = final(ses, summary.id)
    assert done.state is S.COMPLETE, done.history.stacktrace
    assert done.result["procedure_id"] == summary.id
    assert done.progress is not None and done.progress["message"] == "half way"
    assert ("PREP_ENV" in states(done)) is create_env


# -- through the Tango device ------------------------------------------------------------------


@pytest.fixture
def device(tmp_path) -> Iterator[tuple[tango.DeviceProxy, DeviceTestContext]]:
    abort = "def main():\n    return 'aborted'\n"
    properties = device_properties(tmp_path, abort=abort, StopGracePeriod=30.0)
    context = DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=properties
    )
    with context as proxy:
        yield proxy, context


@pytest.mark.forked
@pytest.mark.tango
def test_pause_resume_and_stop_through_the_device(device, gate):
    proxy, _ = device
    events = SummaryEvents(proxy)
    try:
        pid = json.loads(proxy.Prepare(prepare_request("pausing.py", port=gate.port)))["id"]
        events.wait_for(pid, "READY")
        with pytest.raises(tango.DevFailed) as caught:
            proxy.Pause(json.dumps({"id": pid}))
        assert caught.value.args[0].reason == "OET_Refused"
        assert "READY, not RUNNING" in caught.value.args[0].desc
        proxy.Start(start_request(pid, port=gate.port, n=3))
        events.wait_for(pid, "RUNNING")
        asked = json.loads(proxy.Pause(json.dumps({"id": pid})))
        assert asked["state"] == "RUNNING" and asked["pause_pending"] is True
        events.wait_until(lambda evs: any(s["id"] == pid and s["pause_pending"] for s in evs[-1]))
        gate.step(b"p")
        paused = events.wait_for(pid, "PAUSED")
        assert paused["pause_pending"] is False
        assert proxy.state() == tango.DevState.RUNNING  # a paused procedure is not done
        assert proxy.status() == f"Paused procedure {pid} (Resume or Stop it)"
        json.loads(proxy.Resume(json.dumps({"id": pid})))
        events.wait_until(lambda evs: events.states_seen(pid)[-1] == "RUNNING")
        assert proxy.status() == f"Running procedure {pid}"
        gate.step()  # step 1: its progress comes as an event
        events.wait_until(
            lambda evs: any(
                s["id"] == pid and (s["progress"] or {}).get("message") == "step 2 of 3"
                for s in evs[-1]
            )
        )
        json.loads(proxy.Pause(json.dumps({"id": pid})))
        gate.step(b"p")
        events.wait_until(lambda evs: events.states_seen(pid)[-1] == "PAUSED")
        (abort,) = json.loads(proxy.Stop(json.dumps({"id": pid, "run_abort": True})))
        stopped = events.wait_for(pid, "STOPPED")
        assert [s for s, _ in stopped["history"]["process_states"]] == [
            *LOADED, "RUNNING", "PAUSED", "RUNNING", "PAUSED", "STOPPED",
        ]  # fmt: skip
        assert events.states_seen(pid) == [
            *LOADED, "RUNNING", "PAUSED", "RUNNING", "PAUSED", "STOPPED",
        ]  # fmt: skip
        aborted = events.wait_for(abort["id"], {"COMPLETE", "FAILED"})
        assert aborted["result"] == "aborted"
        for bad in ("", "[1]", '{"id": "1"}', '{"id": 1, "x": 2}', "{"):
            with pytest.raises(tango.DevFailed) as caught:
                proxy.Pause(bad)
            assert caught.value.args[0].reason == "OET_InvalidRequest"
            assert '{"id": 1}' in caught.value.args[0].desc
        with pytest.raises(tango.DevFailed) as caught:
            proxy.Resume(json.dumps({"id": 999}))
        assert caught.value.args[0].reason == "OET_UnknownProcedure"
        assert events.errors == []
    finally:
        events.close()


@pytest.mark.forked
@pytest.mark.tango
def test_progress_result_and_the_cli(device, gate):
    proxy, context = device
    events = SummaryEvents(proxy)
    try:
        pid = json.loads(proxy.Prepare(prepare_request("pausing.py", port=gate.port)))["id"]
        events.wait_for(pid, "READY")
        proxy.Start(start_request(pid, port=gate.port, n=2))
        events.wait_for(pid, "RUNNING")
        shown = run_oet(context.get_device_access(), "pause", str(pid))
        assert shown.returncode == 0, shown.stderr
        assert "RUNNING" in shown.stdout and "next checkpoint()" in shown.stdout
        gate.step(b"p")
        events.wait_for(pid, "PAUSED")
        refused = run_oet(context.get_device_access(), "pause", str(pid))
        assert refused.returncode != 0 and "already PAUSED" in refused.stderr
        resumed = run_oet(context.get_device_access(), "--json", "resume", str(pid))
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["id"] == pid
        gate.step()
        gate.step()
        done = events.wait_for(pid, {"COMPLETE", "FAILED"})
        assert done["state"] == "COMPLETE", done["history"]["stacktrace"]
        assert done["result"] == {"steps": 2, "procedure_id": pid, "init_id": pid}
        assert done["progress"]["fraction"] == 1.0
        assert done["progress"]["message"] == "step 2 of 2"
        described = run_oet(context.get_device_access(), "describe", str(pid))
        assert "progress:    100% step 2 of 2" in described.stdout
        assert '"procedure_id": ' in described.stdout
        late = run_oet(context.get_device_access(), "resume", str(pid))
        assert late.returncode != 0 and "COMPLETE, not PAUSED" in late.stderr
    finally:
        events.close()


# -- through the REST face ---------------------------------------------------------------------


def test_pause_and_resume_over_rest(make_service, gate):
    import httpx

    from ska_oso_oet.procedure.ui import server

    ses = make_service(script_roots=[str(SCRIPTS)])
    srv = server.RestServer(ses, "127.0.0.1", 0)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
            pid = prepared(ses, port=gate.port)
            path = f"/procedures/{pid}"
            refused = http.put(path, json={"state": "PAUSED"})
            assert refused.status_code == 409
            assert "READY, not RUNNING" in refused.json()["detail"]
            started(ses, pid, port=gate.port, n=1)
            asked = http.put(path, json={"state": "PAUSED"})
            assert asked.status_code == 200, asked.text
            assert asked.json()["pause_pending"] is True
            gate.step(b"p")
            ses.wait_for_state(pid, S.PAUSED, TIMEOUT)
            assert http.get(path).json()["state"] == "PAUSED"
            resumed = http.put(path, json={"state": "RUNNING"})  # resumes, starts nothing
            assert resumed.status_code == 200, resumed.text
            done = final(ses, pid)
            assert states(done)[len(LOADED) :] == ["RUNNING", "PAUSED", "RUNNING", "READY",
                                                   "COMPLETE"]  # fmt: skip
            got = http.get(path).json()
            assert got["result"]["steps"] == 1 and got["progress"]["fraction"] == 1.0
    finally:
        srv.stop()


def test_status_names_the_running_and_the_paused_procedures():
    from ska_oso_oet.tango.device import _running_status

    assert _running_status((3,), ()) == "Running procedure 3"
    assert _running_status((3, 4, 5), (4,)) == (
        "Running procedure 3, 5; Paused procedure 4 (Resume or Stop it)"
    )
    assert _running_status((4, 6), (4, 6)) == "Paused procedure 4, 6 (Resume or Stop it)"
