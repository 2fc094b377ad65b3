"""No orphans, whatever happens: every process a script started dies with its procedure, however
the procedure ends (main returns, Stop, the worker killed from outside), including processes in
sessions of their own and children forked while the clean-up runs. Real workers and a real
spreading process tree; every process is found by the marker on its command line."""

from __future__ import annotations

import os
import pathlib
import signal

import psutil
import pytest

from ska_oso_oet.procedure import proctree
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ScriptExecutionService,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.domain import ProcedureInput
from ska_oso_oet.procedure.domain import ProcedureState as S
from tests.helpers import TIMEOUT, script

FINAL = [S.COMPLETE, S.STOPPED, S.FAILED, S.UNKNOWN]


def alive(pids_file: pathlib.Path, marker: str) -> list[int]:
    """The processes the spreader wrote down that still live (not zombies), by their marker."""
    living = []
    text = pids_file.read_text() if pids_file.exists() else ""
    for pid in {int(p) for p in text.split()}:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and marker in proc.cmdline():
                living.append(pid)
        except psutil.Error:
            pass
    return living


def written(pids_file: pathlib.Path) -> int:
    return len(pids_file.read_text().split()) if pids_file.exists() else 0


@pytest.mark.parametrize(
    ("how", "ends"),
    [("killed", S.FAILED), ("stopped", S.STOPPED), ("returns", S.COMPLETE)],
)
def test_nothing_a_script_started_outlives_its_procedure(
    ses: ScriptExecutionService, recorder, tmp_path: pathlib.Path, how: str, ends: S
) -> None:
    spreading = recorder("test.spreading")
    pids = tmp_path / "pids"
    marker = f"oet-orphan-test-{os.getpid()}-{how}"
    summary = ses.prepare(PrepareProcessCommand(script("spreader.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    wait = 1.0 if how == "returns" else 600
    run_args = ProcedureInput(str(pids), marker, wait)
    ses.start(StartProcessCommand(summary.id, "main", run_args))
    spreader = spreading.wait(1)[0]["spreader"]
    # it is spreading: many processes exist, more are being forked as the procedure ends
    assert proctree.poll_until(lambda: written(pids) >= 30, TIMEOUT), written(pids)
    if how == "killed":
        worker = psutil.Process(spreader).ppid()  # the worker this service started
        assert "ObservationExecutionTool" not in " ".join(psutil.Process(worker).cmdline())
        os.kill(worker, signal.SIGKILL)  # from outside: the worker cleans up nothing
    elif how == "stopped":
        ses.stop(StopProcessCommand(summary.id, run_abort=False))
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is ends, final.history.stacktrace
    assert written(pids) < 301  # it was still forking when the procedure ended
    assert proctree.poll_until(lambda: not alive(pids, marker), TIMEOUT), alive(pids, marker)
    assert not proctree.pid_alive(spreader)


def test_a_daemon_dies_with_a_worker_killed_from_outside(
    ses: ScriptExecutionService, recorder
) -> None:
    daemon = recorder("test.daemon")
    summary = ses.prepare(PrepareProcessCommand(script("daemonizer.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    daemon_pid = daemon.wait(1)[0]["pid"]
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput(600)))
    ses.wait_for_state(summary.id, S.RUNNING, TIMEOUT)
    session = os.getsid(daemon_pid)
    worker = psutil.Process(daemon_pid).ppid()  # the worker, a subreaper, adopted it
    assert session != os.getsid(worker)  # in a session of its own
    os.kill(worker, signal.SIGKILL)
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert "without reporting an end" in (final.history.stacktrace or "")
    assert proctree.poll_until(lambda: not proctree.pid_alive(daemon_pid), TIMEOUT)
