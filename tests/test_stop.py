"""Stopping procedures, the two-phase abort, workers that die, and shutdown."""

from __future__ import annotations

import os
import signal
import textwrap

import psutil
import pytest

from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureError,
    ProcedureStateError,
    ScriptExecutionService,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.domain import FileSystemScript, ProcedureInput, ProcedureState
from tests.helpers import TIMEOUT, script, states

S = ProcedureState
FINAL = [S.COMPLETE, S.STOPPED, S.FAILED, S.UNKNOWN]


def start_running(ses, name, run_args=None, init_args=None, fn="main"):
    summary = ses.prepare(PrepareProcessCommand(script(name), init_args or ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(summary.id, fn, run_args or ProcedureInput()))
    return ses.wait_for_state(summary.id, S.RUNNING, TIMEOUT).id


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_raises_inside_a_sleeping_script_and_its_cleanup_runs(ses, recorder, tmp_path):
    sleeping = recorder("test.sleeping")
    marker = tmp_path / "marker"
    pid = start_running(ses, "sleeper.py", ProcedureInput(str(marker)))
    worker = sleeping.wait(1)[0]["pid"]
    assert ses.stop(StopProcessCommand(pid, run_abort=False)) == []
    final = ses.wait_for_state(pid, FINAL, TIMEOUT)
    assert final.state is S.STOPPED
    assert states(final)[-2:] == ["RUNNING", "STOPPED"]
    assert marker.read_text() == "cleaned up"  # the finally block ran: SIGTERM raised inside
    assert gone(worker)  # STOPPED is published only once the process is gone


def test_a_script_that_catches_exception_is_still_stopped_promptly(make_service):
    ses = make_service(stop_grace=30)
    pid = start_running(ses, "noisy.py")
    ses.stop(StopProcessCommand(pid, run_abort=False))
    final = ses.wait_for_state(pid, FINAL, 10)  # well within the 30 s grace: no SIGKILL
    assert final.state is S.STOPPED


def test_a_script_ignoring_sigterm_is_killed_after_the_grace_period(make_service, recorder):
    ses = make_service(stop_grace=0.5)
    sleeping = recorder("test.sleeping")
    pid = start_running(ses, "stubborn.py")
    worker = sleeping.wait(1)[0]["pid"]
    ses.stop(StopProcessCommand(pid, run_abort=False))
    final = ses.wait_for_state(pid, FINAL, TIMEOUT)
    assert final.state is S.STOPPED
    assert gone(worker)
    running_at, stopped_at = (t for s, t in final.history.process_states[-2:])
    assert stopped_at - running_at >= 0.5


def test_no_grandchild_survives_a_stop(ses, recorder):
    spawned = recorder("test.spawned")
    pid = start_running(ses, "spawner.py")
    msg = spawned.wait(1)[0]
    ses.stop(StopProcessCommand(pid, run_abort=False))
    assert ses.wait_for_state(pid, FINAL, TIMEOUT).state is S.STOPPED
    for child in [*msg["pids"], msg["worker"]]:
        assert gone(child), f"process {child} survived the stop"


def test_a_worker_killed_from_outside_fails_promptly_naming_the_signal(ses, recorder):
    sleeping = recorder("test.sleeping")
    pid = start_running(ses, "sleeper.py")
    os.kill(sleeping.wait(1)[0]["pid"], signal.SIGKILL)
    final = ses.wait_for_state(pid, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert "SIGKILL" in final.history.stacktrace


def test_a_worker_that_calls_os_exit_fails_with_its_exit_code(ses):
    pid = start_running(ses, "hard_exit.py", ProcedureInput(3))
    final = ses.wait_for_state(pid, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert "exit code 3" in final.history.stacktrace


def test_stop_while_still_loading_ends_stopped(ses):
    summary = ses.prepare(
        PrepareProcessCommand(script("slow_init.py"), ProcedureInput(seconds=60))
    )
    ses.wait_for_state(summary.id, S.INITIALISING, TIMEOUT)
    ses.stop(StopProcessCommand(summary.id, run_abort=False))
    assert ses.wait_for_state(summary.id, FINAL, TIMEOUT).state is S.STOPPED


def test_stop_of_an_ended_procedure_is_refused(ses):
    summary = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(summary.id))
    ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="already ended"):
        ses.stop(StopProcessCommand(summary.id, run_abort=False))


def write_abort_script(tmp_path, body: str) -> FileSystemScript:
    path = tmp_path / "abort.py"
    path.write_text(textwrap.dedent(body))
    return FileSystemScript(f"file://{path}")


def test_two_phase_abort_runs_the_abort_script_with_the_subarray_id(make_service, tmp_path):
    out = tmp_path / "aborted"
    abort = write_abort_script(
        tmp_path,
        f"""
        def init(subarray_id=None):
            global SUBARRAY
            SUBARRAY = subarray_id

        def main():
            with open({str(out)!r}, "w") as f:
                f.write(f"aborted subarray {{SUBARRAY}}")
        """,
    )
    ses = make_service(abort_script=abort)
    pid = start_running(ses, "sleeper.py", init_args=ProcedureInput(subarray_id=4))
    (abort_summary,) = ses.stop(StopProcessCommand(pid, run_abort=True))
    assert abort_summary.script == abort
    stopped = ses.wait_for_state(pid, FINAL, TIMEOUT)
    done = ses.wait_for_state(abort_summary.id, FINAL, TIMEOUT)
    assert stopped.state is S.STOPPED and done.state is S.COMPLETE
    assert out.read_text() == "aborted subarray 4"
    (abort_init,) = [c for c in done.script_args if c.fn == "init"]
    assert abort_init.fn_args == ProcedureInput(subarray_id=4)
    # the abort ran only once the stopped process was gone
    stopped_at = stopped.history.process_states[-1][1]
    running_at = next(t for s, t in done.history.process_states if s is S.RUNNING)
    assert running_at >= stopped_at


def test_a_failing_abort_script_is_reported(make_service, tmp_path):
    abort = write_abort_script(tmp_path, "def main():\n    raise RuntimeError('abort broke')\n")
    ses = make_service(abort_script=abort)
    pid = start_running(ses, "sleeper.py")
    (abort_summary,) = ses.stop(StopProcessCommand(pid, run_abort=True))
    done = ses.wait_for_state(abort_summary.id, FINAL, TIMEOUT)
    assert done.state is S.FAILED
    assert "abort broke" in done.history.stacktrace


def test_run_abort_without_an_abort_script_is_refused_and_stops_nothing(ses):
    pid = start_running(ses, "sleeper.py")
    with pytest.raises(ProcedureError, match="No abort script"):
        ses.stop(StopProcessCommand(pid, run_abort=True))
    assert ses.summarise([pid])[0].state is S.RUNNING


def test_shutdown_ends_every_worker_and_reports_them_stopped(no_leftover_processes, recorder):
    sleeping = recorder("test.sleeping")
    ses = ScriptExecutionService(stop_grace=0.5, max_running=2)
    running = start_running(ses, "sleeper.py")
    stubborn = start_running(ses, "stubborn.py")
    ready = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput())).id
    ses.wait_for_state(ready, S.READY, TIMEOUT)
    workers = [m["pid"] for m in sleeping.wait(2)]
    ses.shutdown()
    assert [s.state for s in ses.summarise([running, stubborn, ready])] == [S.STOPPED] * 3
    assert ses.illegal_transitions == []  # made here, not by make_service: checked here
    assert all(gone(w) for w in workers)
    with pytest.raises(ProcedureError, match="shut down"):
        ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))


@pytest.mark.parametrize("stop", [True, False])
def test_a_double_forked_daemon_does_not_outlive_its_procedure(ses, recorder, stop):
    daemon = recorder("test.daemon")
    summary = ses.prepare(PrepareProcessCommand(script("daemonizer.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    daemon_pid = daemon.wait(1)[0]["pid"]
    assert not gone(daemon_pid)
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput(600 if stop else 0)))
    if stop:
        ses.wait_for_state(summary.id, S.RUNNING, TIMEOUT)
        ses.stop(StopProcessCommand(summary.id, run_abort=False))
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is (S.STOPPED if stop else S.COMPLETE)
    assert gone(daemon_pid)


def test_a_script_that_kills_the_fork_server_harms_no_other_procedure(make_service, recorder):
    ses = make_service(max_running=2)
    sleeping = recorder("test.sleeping")
    other = start_running(ses, "sleeper.py")
    worker = sleeping.wait(1)[0]["pid"]
    summary = ses.prepare(PrepareProcessCommand(script("parricide.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    assert ses.wait_for_state(summary.id, FINAL, TIMEOUT).state is S.COMPLETE
    assert ses.summarise([other])[0].state is S.RUNNING
    assert not gone(worker)
    ses.stop(StopProcessCommand(other, run_abort=False))
    assert ses.wait_for_state(other, FINAL, TIMEOUT).state is S.STOPPED
    assert gone(worker)
    # new procedures still start: the fork server is started again
    again = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    assert ses.wait_for_state(again.id, [S.READY, *FINAL], TIMEOUT).state is S.READY


def test_a_worker_that_reads_nothing_does_not_stall_the_others(ses, recorder):
    big = recorder("test.big")
    frozen = ses.prepare(PrepareProcessCommand(script("selfstop.py"), ProcedureInput()))
    ses.wait_for_state(frozen.id, S.LOADING, TIMEOUT)
    talker = start_running(ses, "bigpub.py")
    assert [m["index"] for m in big.wait(5)] == [0, 1, 2, 3, 4]  # 10 MB meant for `frozen`
    ses.stop(StopProcessCommand(talker, run_abort=False))
    assert ses.wait_for_state(talker, FINAL, 5).state is S.STOPPED
    fresh = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    assert ses.wait_for_state(fresh.id, [S.READY, *FINAL], 5).state is S.READY
    ses.stop(StopProcessCommand(frozen.id, run_abort=False))  # SIGKILL after the grace
    assert ses.wait_for_state(frozen.id, FINAL, TIMEOUT).state is S.STOPPED
