"""The procedure lifecycle with real worker processes: states, arguments, messages."""

from __future__ import annotations

import threading

import pytest
from pubsub import pub

from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureSummary,
    StartProcessCommand,
)
from ska_oso_oet.procedure.domain import ProcedureInput, ProcedureState
from tests.helpers import TIMEOUT, HistoryWaiter, run_to_end, script, states

S = ProcedureState


def test_prepare_returns_at_once_in_creating(ses):
    summary = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    assert summary.state is S.CREATING
    assert states(summary) == ["CREATING"]
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)


def test_script_without_init_passes_the_contract_states_in_order(ses, recorder):
    hello = recorder("test.hello")
    final = run_to_end(ses, "hello.py", run_args=ProcedureInput(1, "two", three=3))
    assert states(final) == [
        "CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip
    assert final.state is S.COMPLETE
    assert final.history.stacktrace is None
    times = [t for _, t in final.history.process_states]
    assert times == sorted(times)
    (msg,) = hello.wait(1)
    assert msg["args"] == [1, "two"] and msg["kwargs"] == {"three": 3}


def test_init_runs_between_second_idle_and_ready_with_its_arguments(ses, recorder):
    called = recorder("test.called")
    final = run_to_end(
        ses,
        "with_init.py",
        init_args=ProcedureInput(7, subarray_id=2),
        run_args=ProcedureInput(x=1),
    )
    assert states(final) == [
        "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY",
        "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip
    init, main = called.wait(2)
    assert init == {
        "msg_src": "with_init",
        "fn": "init",
        "args": [7],
        "kwargs": {"subarray_id": 2},
    }
    assert main["fn"] == "main"
    assert main["kwargs"] == {"x": 1, "init": {"subarray_id": 2}, "qa": False}


def test_every_call_is_captured_with_its_arguments(ses):
    final = run_to_end(ses, "with_init.py", init_args=ProcedureInput(subarray_id=1))
    captures = [(c.fn, c.fn_args) for c in final.script_args]
    assert captures == [("init", ProcedureInput(subarray_id=1)), ("main", ProcedureInput())]
    assert all(c.time is not None for c in final.script_args)


def test_a_function_other_than_main_returns_to_ready_and_can_run_again(ses, recorder):
    called = recorder("test.called")
    summary = ses.prepare(PrepareProcessCommand(script("with_init.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    with HistoryWaiter(ses, summary.id, ["RUNNING", "READY"]) as waiter:
        ses.start(StartProcessCommand(summary.id, "other", ProcedureInput(1)))
        waiter.wait()
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    final = ses.wait_for_state(summary.id, S.COMPLETE, TIMEOUT)
    assert states(final)[-6:] == ["READY", "RUNNING", "READY", "RUNNING", "READY", "COMPLETE"]
    assert [m["fn"] for m in called.wait(3)] == ["init", "other", "main"]


def test_context_carries_wait_for_qa_ready_as_it_stands_at_start(ses, recorder):
    called = recorder("test.called")
    pub.sendMessage("operator.wait_for_qa_ready.enable", msg_src="operator")
    assert ses.wait_for_qa_ready is True
    run_to_end(ses, "with_init.py")
    assert called.wait(2)[1]["kwargs"]["qa"] is True
    pub.sendMessage("operator.wait_for_qa_ready.disable", msg_src="operator")
    assert ses.wait_for_qa_ready is False
    run_to_end(ses, "with_init.py")
    assert called.wait(4)[3]["kwargs"]["qa"] is False


def test_sys_exit_zero_in_main_completes_and_non_zero_fails(ses):
    assert run_to_end(ses, "exits.py", run_args=ProcedureInput(0)).state is S.COMPLETE
    failed = run_to_end(ses, "exits.py", run_args=ProcedureInput(4))
    assert failed.state is S.FAILED
    assert "sys.exit(4)" in failed.history.stacktrace


def test_listeners_see_every_state_once_and_in_order(ses):
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def listener(summary: ProcedureSummary) -> None:
        seen.append((summary.id, summary.state.name))
        if summary.state.is_final:
            done.set()

    ses.add_listener(listener)
    final = run_to_end(ses, "with_init.py")
    assert done.wait(TIMEOUT)
    assert [s for pid, s in seen if pid == final.id] == states(final)


def test_many_prepares_from_many_threads_all_become_ready(make_service):
    ses = make_service(spare_workers=2)
    ids: list[int] = []
    lock = threading.Lock()

    def prepare() -> None:
        s = ses.prepare(PrepareProcessCommand(script("with_init.py"), ProcedureInput()))
        with lock:
            ids.append(s.id)

    threads = [threading.Thread(target=prepare) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids) == list(range(1, 13))
    for pid in ids:
        assert ses.wait_for_state(pid, S.READY, TIMEOUT).state is S.READY


def test_force_start_queues_the_call_until_ready(ses):
    summary = ses.prepare(
        PrepareProcessCommand(script("slow_init.py"), ProcedureInput(seconds=0.3))
    )
    started = ses.start(
        StartProcessCommand(summary.id, "main", ProcedureInput(), force_start=True)
    )
    assert started.state in (S.CREATING, S.IDLE, S.LOADING, S.INITIALISING)
    final = ses.wait_for_state(summary.id, [S.COMPLETE, S.FAILED], TIMEOUT)
    assert states(final) == [
        "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY",
        "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip


def test_two_may_run_at_once_when_the_setting_allows(make_service):
    ses = make_service(max_running=2)
    ids = []
    for _ in range(2):
        s = ses.prepare(PrepareProcessCommand(script("sleeper.py"), ProcedureInput()))
        ses.wait_for_state(s.id, S.READY, TIMEOUT)
        ses.start(StartProcessCommand(s.id, "main", ProcedureInput()))
        ids.append(s.id)
    for pid in ids:
        assert ses.wait_for_state(pid, S.RUNNING, TIMEOUT).state is S.RUNNING


@pytest.mark.parametrize("limit", [1, 2])
def test_history_keeps_live_procedures_and_the_latest_ended(make_service, limit):
    ses = make_service(history_limit=limit)
    live = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ended = [run_to_end(ses, "hello.py").id for _ in range(3)]
    held = [s.id for s in ses.summarise()]
    assert held == [live.id, *ended[len(ended) - limit :]]


def test_pubsub_messages_cross_from_one_script_to_another(make_service, recorder):
    ses = make_service(max_running=2)
    listening, relayed = recorder("test.listening"), recorder("test.relayed")
    listener = ses.prepare(PrepareProcessCommand(script("listener.py"), ProcedureInput()))
    ses.wait_for_state(listener.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(listener.id, "main", ProcedureInput()))
    listening.wait(1)
    run_to_end(ses, "talker.py", run_args=ProcedureInput(text="over"))
    # payloads cross as JSON data: a tuple arrives as a list
    assert relayed.wait(1)[0]["messages"] == [["talker", "over"]]
    assert ses.wait_for_state(listener.id, [S.COMPLETE, S.FAILED], TIMEOUT).state is S.COMPLETE
