"""A server that never goes blind: if the process supervisor's loop dies, every client sees it
at once (State FAULT, healthState FAILED, Status naming the error), new work is refused with a
clear DevFailed, every worker is ended, and Init brings the device back. And the supervisor
watches any number of workers: 300 live procedures all end.

The supervisor is made to fail the way a bug in it would: it is handed a command that makes its
loop raise."""

from __future__ import annotations

import gc
import json
import resource
import threading
from typing import Any

import psutil
import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet.procedure import proctree
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ScriptExecutionService,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.domain import ProcedureInput
from ska_oso_oet.procedure.domain import ProcedureState as S
from ska_oso_oet.procedure.errors import ProcedureError
from ska_oso_oet.tango.device import ObservationExecutionTool
from ska_oso_oet.tango.ska import HealthState
from tests.helpers import SCRIPTS, TIMEOUT, SummaryEvents, script

FINAL = [S.COMPLETE, S.STOPPED, S.FAILED, S.UNKNOWN]


def live_workers() -> list[psutil.Process]:
    """This process's worker processes alive now (one that ends while listed is not)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "oet-worker" in p.name():
                found.append(p)
        except psutil.NoSuchProcess:
            pass  # ended between the listing and the look
    return found


def break_supervisor(ses: ScriptExecutionService) -> None:
    """Make the supervisor's loop fail as a bug in it would (white box: the one way in): a
    command whose procedure ID is not an ID makes its next turn raise TypeError."""
    from ska_oso_oet.procedure import supervisor

    ses._supervisor._post(supervisor._Stop([]))  # type: ignore[arg-type]


def test_a_dead_supervisor_fails_every_procedure_and_refuses_new_work(make_service: Any) -> None:
    ses = make_service(max_running=2)
    failures: list[str] = []
    told = threading.Event()
    ses.add_failure_listener(lambda f: (failures.append(f), told.set()))
    running = ses.prepare(PrepareProcessCommand(script("sleeper.py"), ProcedureInput())).id
    ready = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput())).id
    for pid in (running, ready):
        ses.wait_for_state(pid, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(running, "main", ProcedureInput()))
    ses.wait_for_state(running, S.RUNNING, TIMEOUT)
    workers = live_workers()

    break_supervisor(ses)
    assert told.wait(TIMEOUT)
    assert failures == [ses.failure] and ses.failure and "TypeError" in ses.failure
    for pid in (running, ready):
        final = ses.wait_for_state(pid, FINAL, TIMEOUT)
        assert final.state is S.FAILED
        assert "process supervisor failed" in (final.history.stacktrace or "")
    assert not ses.healthy
    with pytest.raises(ProcedureError, match="Init restarts the service"):
        ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    # every worker it had is gone
    _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
    assert alive == []


def test_shutdown_while_a_failed_supervisor_still_reports_its_failure(make_service: Any) -> None:
    """A failed supervisor is closed while its thread still tells the listeners: shutting the
    service down in that window (as Init or the end of a test does) waits for the thread and
    raises nothing."""
    ses = make_service()
    reporting, release = threading.Event(), threading.Event()
    ses.add_failure_listener(lambda f: (reporting.set(), release.wait(TIMEOUT)))
    break_supervisor(ses)
    assert reporting.wait(TIMEOUT)
    thread = ses._supervisor._thread
    assert thread.is_alive()  # the window: closed, and its thread still in the listener
    join = thread.join

    def release_then_join(timeout: float | None = None) -> None:
        release.set()  # only once shutdown has got as far as waiting for the thread
        join(timeout)

    thread.join = release_then_join  # type: ignore[method-assign]
    ses.shutdown()
    assert not thread.is_alive()
    assert release.is_set()  # shutdown did wait for the thread


@pytest.mark.forked
@pytest.mark.tango
def test_the_device_shows_fault_at_once_and_init_brings_it_back(tmp_path: Any) -> None:
    properties = {"ScriptRoots": [str(SCRIPTS)], "StopGracePeriod": 1.0}
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties=properties,
        process=False,  # the device runs in this process: the test can break its supervisor
    ) as device:
        events = SummaryEvents(device)
        states: list[tango.DevState] = []
        faulted = threading.Event()

        def on_state(event: Any) -> None:
            if not event.err:
                states.append(event.attr_value.value)
                if event.attr_value.value == tango.DevState.FAULT:
                    faulted.set()

        device.subscribe_event("State", tango.EventType.CHANGE_EVENT, on_state)
        request = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS}/sleeper.py"}
        }
        pid = json.loads(device.Prepare(json.dumps(request)))["id"]
        events.wait_for(pid, {"READY"})
        device.Start(json.dumps({"id": pid}))
        events.wait_for(pid, {"RUNNING"})

        (ses,) = [
            o for o in gc.get_objects() if isinstance(o, ScriptExecutionService) and o.healthy
        ]  # the device's, the one open in this process
        break_supervisor(ses)
        assert faulted.wait(TIMEOUT), states  # pushed: no client has to poll for it
        failed = events.wait_for(pid, {"FAILED"})
        assert "process supervisor failed" in failed["history"]["stacktrace"]
        assert device.state() == tango.DevState.FAULT
        assert device.healthState == HealthState.FAILED
        assert "process supervisor failed" in device.status() and "Init" in device.status()
        with pytest.raises(tango.DevFailed) as refused:
            device.Prepare(json.dumps(request))
        assert refused.value.args[0].reason == "OET_NotReady"
        assert "Init" in refused.value.args[0].desc
        assert json.loads(device.Summarise(json.dumps([pid])))[0]["state"] == "FAILED"

        device.Init()
        assert device.state() == tango.DevState.ON
        assert device.healthState == HealthState.OK
        again = json.loads(device.Prepare(json.dumps(request)))["id"]
        assert again > pid
        events.wait_for(again, {"READY"})
        device.Stop(json.dumps({"id": again}))
        events.wait_for(again, {"STOPPED"})


def test_300_live_procedures_all_end(make_service: Any) -> None:
    """No select() limit: 300 workers (over 1024 descriptors) watched at once, all ending."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    if wanted < 4096:
        pytest.fail(f"the hard limit of open files is {hard}: raise it to run this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        ses = make_service(max_running=300, max_procedures=300, spare_workers=0, history_limit=300)
        ids = [
            ses.prepare(PrepareProcessCommand(script("sleeper.py"), ProcedureInput())).id
            for _ in range(300)
        ]
        for pid in ids:
            ses.wait_for_state(pid, [S.READY, *FINAL], 120)
        assert [s.state for s in ses.summarise(ids)] == [S.READY] * 300
        me = psutil.Process()
        assert me.num_fds() > 1024  # more than select() could ever watch
        for pid in ids[:150]:  # half of them run, then all are stopped or end
            ses.start(StartProcessCommand(pid, "main", ProcedureInput(seconds=0)))
        for pid in ids[150:]:
            ses.stop(StopProcessCommand(pid, run_abort=False))
        for pid in ids:
            ses.wait_for_state(pid, FINAL, 120)
        ended = {s.state for s in ses.summarise(ids)}
        assert ended <= {S.COMPLETE, S.STOPPED}, ended
        assert proctree.poll_until(
            lambda: not live_workers(),
            TIMEOUT,
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.forked
@pytest.mark.tango
def test_init_with_clients_busy_drops_and_reorders_nothing_and_keeps_one_event_thread(
    tmp_path: Any,
) -> None:
    properties = {
        "ScriptRoots": [str(SCRIPTS)],
        "StopGracePeriod": 3.0,
        "MaxRunning": 3,
    }
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties=properties,
        process=False,  # in this process: its threads can be counted
    ) as device:
        subscribers = [SummaryEvents(device), SummaryEvents(tango.DeviceProxy(device.name()))]
        hello = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS}/hello.py"}
        }
        stubborn = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS}/stubborn.py"}
        }
        busy = threading.Event()
        done = threading.Event()

        def client() -> None:  # another client, preparing and stopping all along
            proxy = tango.DeviceProxy(device.name())
            own = SummaryEvents(proxy)
            while not done.is_set():
                try:
                    pid = json.loads(proxy.Prepare(json.dumps(hello)))["id"]
                    proxy.Stop(json.dumps({"id": pid}))
                except tango.DevFailed:
                    continue  # refused while the device is between two services: fine
                own.wait_for(pid, FINAL_NAMES)  # one at a time, as a client would
                busy.set()
            own.close()

        # a barrier: both subscriptions carry events (ZMQ joins a moment after subscribing)
        first = json.loads(device.Prepare(json.dumps(hello)))["id"]
        device.Stop(json.dumps({"id": first}))
        for events in subscribers:
            events.wait_for(first, FINAL_NAMES)
        worker = threading.Thread(target=client, daemon=True)
        worker.start()
        assert busy.wait(TIMEOUT)
        for _ in range(3):
            pid = json.loads(device.Prepare(json.dumps(stubborn)))["id"]
            subscribers[0].wait_for(pid, {"READY"})
            device.Start(json.dumps({"id": pid}))
            subscribers[0].wait_for(pid, {"RUNNING"})
            device.Init()  # within the client's 3 s although the script ignores SIGTERM
            for events in subscribers:
                assert events.wait_for(pid, FINAL_NAMES)["state"] == "STOPPED"
        done.set()
        worker.join(TIMEOUT)
        threads = [t for t in threading.enumerate() if t.name == "oet-events"]
        assert len(threads) == 1, threads
        # no event dropped or reordered: each subscriber saw every procedure's history, state
        # by state, as the device finally has it
        for pid in [s["id"] for s in json.loads(device.Summarise(""))]:
            for events in subscribers:  # every procedure has ended: wait for the last events
                events.wait_for(pid, FINAL_NAMES)
        final = {s["id"]: s for s in json.loads(device.Summarise(""))}
        for events in subscribers:
            assert events.errors == []
            for pid, summary in final.items():
                if pid == first:
                    continue  # subscribed before it: its first events may predate the join
                history = [st for st, _ in summary["history"]["process_states"]]
                folded = [st for i, st in enumerate(history) if i == 0 or history[i - 1] != st]
                assert events.states_seen(pid) == folded, (pid, events.states_seen(pid))


FINAL_NAMES = {"COMPLETE", "STOPPED", "FAILED", "UNKNOWN"}
