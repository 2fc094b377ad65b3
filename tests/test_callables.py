"""What a Start may call, and its arguments checked before anything runs (real workers)."""

from __future__ import annotations

import json

import pytest

from ska_oso_oet.procedure.application import (
    InvalidArgumentsError,
    PrepareProcessCommand,
    ProcedureError,
    StartProcessCommand,
)
from ska_oso_oet.procedure.domain import ProcedureInput, ProcedureState
from tests.helpers import HistoryWaiter, script

S = ProcedureState
TIMEOUT = 20
FINAL = [S.COMPLETE, S.FAILED, S.STOPPED]


def ready(ses, name="styles.py", **init):
    summary = ses.prepare(PrepareProcessCommand(script(name), ProcedureInput(**init)))
    assert ses.wait_for_state(summary.id, S.READY, TIMEOUT).state is S.READY
    return summary.id


@pytest.mark.parametrize(
    "fn, args, kwargs, recorded",
    [
        ("main", (), {"name": "Tango"}, {"name": "Tango", "subarray_id": 3}),  # partial
        ("observe", (), {"target": "M31"}, {"target": "M31"}),  # a callable object
        ("scan", (), {"n": 4}, {"n": 4}),  # a bound method
        ("measure", (), {"seconds": 0.5}, {"seconds": 0.5}),  # async def
        ("bare", (), {}, {"bare": True}),
        ("with_context", (), {}, {"qa": False}),  # context is filled in, not asked for
    ],
)
def test_callables_the_script_made_are_started_and_complete(
    ses, tmp_path, fn, args, kwargs, recorded
):
    pid = ready(ses, subarray_id=3)
    marker = tmp_path / "called.json"
    with HistoryWaiter(ses, pid, ["RUNNING", "READY"]) as ran:  # its function ran to its end
        ses.start(StartProcessCommand(pid, fn, ProcedureInput(str(marker), *args, **kwargs)))
        ran.wait()
    # main ends the procedure; any other function leaves it READY for more
    final = ses.wait_for_state(pid, FINAL if fn == "main" else [S.READY], TIMEOUT)
    assert final.state is (S.COMPLETE if fn == "main" else S.READY)
    assert json.loads(marker.read_text()) == recorded


def test_a_name_in_all_is_allowed_whatever_it_is(ses):
    pid = ready(ses, subarray_id=1)
    with HistoryWaiter(ses, pid, ["RUNNING", "READY"]) as ran:
        ses.start(StartProcessCommand(pid, "root", ProcedureInput(16)))
        ran.wait()
    assert ses.summarise([pid])[0].state is S.READY


def test_an_imported_function_is_refused_and_the_procedure_stays_ready(ses, tmp_path):
    pid = ready(ses, subarray_id=1)
    with pytest.raises(ProcedureError, match="has no function 'run'"):
        ses.start(StartProcessCommand(pid, "run", ProcedureInput(["touch", str(tmp_path / "x")])))
    with pytest.raises(ProcedureError, match="has no function 'run'"):
        ses.start(StartProcessCommand(pid, "run", ProcedureInput(), force_start=True))
    assert ses.summarise([pid])[0].state is S.READY
    assert not (tmp_path / "x").exists()


def test_a_forced_start_of_an_imported_function_fails_the_procedure_cleanly(ses, tmp_path):
    summary = ses.prepare(PrepareProcessCommand(script("styles.py"), ProcedureInput(1)))
    target = tmp_path / "x"
    ses.start(
        StartProcessCommand(
            summary.id, "run", ProcedureInput(["touch", str(target)]), force_start=True
        )
    )
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert final.history.stacktrace.startswith(
        "The script has no function 'run' that a Start may call"
    )
    assert not target.exists()


@pytest.mark.parametrize(
    "fn, run_args, names",
    [
        ("main", ProcedureInput("m", bogus=1), "unexpected keyword argument 'bogus'"),
        ("main", ProcedureInput(), "missing a required argument: 'marker'"),
        ("bare", ProcedureInput("m", "extra"), "too many positional arguments"),
        ("observe", ProcedureInput("m"), "missing a required argument: 'target'"),
    ],
)
def test_a_call_that_cannot_bind_is_refused_naming_the_parameter(
    ses, tmp_path, fn, run_args, names
):
    pid = ready(ses, subarray_id=1)
    with pytest.raises(InvalidArgumentsError, match=names) as info:
        ses.start(StartProcessCommand(pid, fn, run_args))
    assert "still READY" in str(info.value)
    assert ses.summarise([pid])[0].state is S.READY
    marker = tmp_path / "called.json"  # and then it is started correctly
    ses.start(StartProcessCommand(pid, "main", ProcedureInput(str(marker))))
    assert ses.wait_for_state(pid, FINAL, TIMEOUT).state is S.COMPLETE
    assert json.loads(marker.read_text()) == {"name": "world", "subarray_id": 1}
