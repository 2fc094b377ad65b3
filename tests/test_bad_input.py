"""Bad requests and broken scripts: clear errors, and the service goes on serving."""

from __future__ import annotations

import os

import pytest

from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureError,
    ProcedureStateError,
    ScriptRejectedError,
    StartProcessCommand,
    StopProcessCommand,
    UnknownProcedureError,
)
from ska_oso_oet.procedure.domain import FileSystemScript, ProcedureInput, ProcedureState
from tests.helpers import SCRIPTS, TIMEOUT, HistoryWaiter, run_to_end, script, states

S = ProcedureState
FINAL = [S.COMPLETE, S.STOPPED, S.FAILED]


def prepare_to_end(ses, name, init_args=None):
    summary = ses.prepare(PrepareProcessCommand(script(name), init_args or ProcedureInput()))
    return ses.wait_for_state(summary.id, [S.READY, *FINAL], TIMEOUT)


def assert_still_serving(ses):
    assert run_to_end(ses, "hello.py").state is S.COMPLETE


@pytest.mark.parametrize(
    "uri, message",
    [
        ("/abs/path.py", "must start with 'file://'"),
        ("git://x.py", "must start with 'file://'"),
        ("file://relative/x.py", "absolute path"),
        ("file://", "names no file"),
    ],
)
def test_malformed_uris_are_refused(uri, message):
    with pytest.raises(ValueError, match=message):
        FileSystemScript(uri)


def test_a_missing_file_is_refused_at_prepare(ses):
    with pytest.raises(ScriptRejectedError, match="not found"):
        ses.prepare(
            PrepareProcessCommand(FileSystemScript("file:///no/such/script.py"), ProcedureInput())
        )
    assert ses.summarise() == []
    assert_still_serving(ses)


def test_a_directory_is_refused_at_prepare(ses):
    with pytest.raises(ScriptRejectedError, match="not a regular file"):
        ses.prepare(PrepareProcessCommand(FileSystemScript(f"file://{SCRIPTS}"), ProcedureInput()))


def test_scripts_outside_the_roots_are_refused_even_through_symlinks(make_service, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.py").write_text("def main():\n    pass\n")
    os.symlink(SCRIPTS / "hello.py", root / "escape.py")
    ses = make_service(script_roots=[str(root)])
    for uri in (f"file://{SCRIPTS / 'hello.py'}", f"file://{root}/escape.py",
                f"file://{root}/../root/../../etc/passwd"):  # fmt: skip
        with pytest.raises(ScriptRejectedError, match="outside the allowed script directories"):
            ses.prepare(PrepareProcessCommand(FileSystemScript(uri), ProcedureInput()))
    ok = ses.prepare(PrepareProcessCommand(FileSystemScript(f"file://{root}/ok.py")))
    assert ses.wait_for_state(ok.id, S.READY, TIMEOUT).state is S.READY


@pytest.mark.parametrize(
    "name, expected",
    [
        ("syntax_error.py", "SyntaxError"),
        ("import_error.py", "ModuleNotFoundError: No module named 'this_module_does_not_exist'"),
    ],
)
def test_a_script_that_cannot_load_fails_with_its_stacktrace(ses, name, expected):
    final = prepare_to_end(ses, name)
    assert final.state is S.FAILED
    assert states(final) == ["CREATING", "IDLE", "LOADING", "FAILED"]
    assert expected in final.history.stacktrace
    assert_still_serving(ses)


def test_an_exception_in_init_fails_with_its_stacktrace(ses):
    final = prepare_to_end(ses, "init_fails.py", ProcedureInput(subarray_id=9))
    assert final.state is S.FAILED
    assert states(final)[-2:] == ["INITIALISING", "FAILED"]
    assert "ValueError: subarray 9 is not available" in final.history.stacktrace
    assert_still_serving(ses)


def test_an_exception_in_main_fails_with_its_stacktrace(ses):
    final = run_to_end(ses, "failing.py")
    assert final.state is S.FAILED
    assert states(final)[-2:] == ["RUNNING", "FAILED"]
    assert "RuntimeError: the telescope is on fire" in final.history.stacktrace
    assert 'failing.py", line' in final.history.stacktrace
    assert "worker.py" not in final.history.stacktrace  # the script's frames only
    assert_still_serving(ses)


def test_start_of_a_function_the_script_does_not_have_is_refused(ses):
    ready = prepare_to_end(ses, "with_init.py")
    with pytest.raises(ProcedureError, match="no function 'nope'.*main, other"):
        ses.start(StartProcessCommand(ready.id, "nope", ProcedureInput()))
    for bad in ("_private", "not-a-name", ""):
        with pytest.raises(ProcedureError, match="not the name of a public script function"):
            ses.start(StartProcessCommand(ready.id, bad, ProcedureInput()))
    assert ses.summarise([ready.id])[0].state is S.READY


def test_a_forced_start_of_a_missing_function_fails_the_procedure(ses):
    summary = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ses.start(StartProcessCommand(summary.id, "nope", ProcedureInput(), force_start=True))
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert final.history.stacktrace.startswith(
        "The script has no function 'nope' that a Start may call (its own functions: main)"
    )


def test_unknown_ids_are_refused(ses):
    with pytest.raises(UnknownProcedureError, match="No procedure with ID 42"):
        ses.start(StartProcessCommand(42, "main", ProcedureInput()))
    with pytest.raises(UnknownProcedureError):
        ses.stop(StopProcessCommand(42, run_abort=False))
    with pytest.raises(UnknownProcedureError, match="42"):
        ses.summarise([42])


def test_start_when_not_ready_is_refused_without_force(ses):
    summary = ses.prepare(
        PrepareProcessCommand(script("slow_init.py"), ProcedureInput(seconds=60))
    )
    ses.wait_for_state(summary.id, S.INITIALISING, TIMEOUT)
    with pytest.raises(ProcedureStateError, match="INITIALISING, not READY.*force_start"):
        ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))


def test_only_one_procedure_runs_at_a_time_by_default(ses):
    first = ses.prepare(PrepareProcessCommand(script("sleeper.py"), ProcedureInput()))
    second = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ses.wait_for_state(first.id, S.READY, TIMEOUT)
    ses.wait_for_state(second.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(first.id, "main", ProcedureInput()))
    with pytest.raises(ProcedureStateError, match=f"Procedure {first.id} is running"):
        ses.start(StartProcessCommand(second.id, "main", ProcedureInput()))
    with pytest.raises(ProcedureStateError, match="already running"):
        ses.start(StartProcessCommand(first.id, "main", ProcedureInput()))
    ses.stop(StopProcessCommand(first.id, run_abort=False))
    ses.wait_for_state(first.id, FINAL, TIMEOUT)
    ses.start(StartProcessCommand(second.id, "main", ProcedureInput()))
    assert ses.wait_for_state(second.id, FINAL, TIMEOUT).state is S.COMPLETE


def test_force_start_of_an_ended_procedure_is_refused(ses):
    final = run_to_end(ses, "hello.py")
    with pytest.raises(ProcedureStateError, match="has ended"):
        ses.start(StartProcessCommand(final.id, "main", ProcedureInput(), force_start=True))


def test_arguments_must_be_procedure_inputs(ses):
    with pytest.raises(ProcedureError, match="init_args"):
        ses.prepare(PrepareProcessCommand(script("hello.py"), {"args": []}))  # type: ignore[arg-type]


def test_settings_are_checked():
    from ska_oso_oet.procedure.application import ScriptExecutionService

    with pytest.raises(ValueError, match="max_running"):
        ScriptExecutionService(max_running=0)


def run_function(ses, fn, expect_return):
    """Run ``fn`` of misbehaving.py; return the summary once it returned or ended."""
    summary = ses.prepare(PrepareProcessCommand(script("misbehaving.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    if not expect_return:
        ses.start(StartProcessCommand(summary.id, fn, ProcedureInput()))
        return ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    with HistoryWaiter(ses, summary.id, ["RUNNING", "READY"]) as waiter:
        ses.start(StartProcessCommand(summary.id, fn, ProcedureInput()))
        waiter.wait()
    return ses.summarise([summary.id])[0]


@pytest.mark.parametrize("fn", ["coroutine", "forks", "unpicklable", "floods_stdout"])
def test_misbehaving_functions_that_return_leave_the_worker_serving(ses, fn):
    returned = run_function(ses, fn, expect_return=True)
    assert returned.state is S.READY
    ses.start(StartProcessCommand(returned.id, "main", ProcedureInput()))
    final = ses.wait_for_state(returned.id, FINAL, TIMEOUT)
    assert final.state is S.COMPLETE, final.history.stacktrace
    assert states(final).count("COMPLETE") == 1


def test_an_async_script_function_is_awaited(ses, recorder):
    answers = recorder("test.async")
    run_function(ses, "coroutine", expect_return=True)
    assert answers.wait(1)[0]["value"] is None


@pytest.mark.parametrize("fn", ["keyboard_interrupt", "closes_its_pipe"])
def test_misbehaving_functions_that_break_the_worker_fail_it(ses, fn):
    final = run_function(ses, fn, expect_return=False)
    assert final.state is S.FAILED
    assert final.history.stacktrace
    assert_still_serving(ses)


def test_a_script_may_use_a_multiprocessing_pool(ses, recorder):
    told = recorder("test.pool")
    final = run_to_end(ses, "pool.py")
    assert final.state is S.COMPLETE, final.history.stacktrace
    assert told.wait(1)[0]["result"] == [x * x for x in range(10)]


def test_a_script_is_read_once_through_no_symlink(tmp_path):
    from ska_oso_oet.procedure.scripts import ScriptChangedError, read_checked_file

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.py").write_bytes(b"x = 1\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.py").write_bytes(b"x = 2\n")
    real = str(tmp_path / "dir" / "x.py")
    assert read_checked_file(real) == b"x = 1\n"
    os.symlink(tmp_path / "other", tmp_path / "link")
    os.symlink(tmp_path / "other" / "x.py", tmp_path / "dir" / "y.py")
    for path in (str(tmp_path / "link" / "x.py"), str(tmp_path / "dir" / "y.py")):
        with pytest.raises(ScriptChangedError, match="changed after it was checked"):
            read_checked_file(path)
    os.mkfifo(tmp_path / "dir" / "fifo.py")
    with pytest.raises(ScriptChangedError, match="not a regular file"):
        read_checked_file(str(tmp_path / "dir" / "fifo.py"))  # at once: no reader waits
    with pytest.raises(FileNotFoundError, match="Script file not found"):
        read_checked_file(str(tmp_path / "dir" / "missing.py"))
    for bad in ("dir/x.py", f"{tmp_path}/dir/../dir/x.py"):
        with pytest.raises(ValueError):
            read_checked_file(bad)
