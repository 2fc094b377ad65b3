"""The durable history store (procedure/history.py): real SQLite files in tmp_path, and a real
child process killed with SIGKILL while it writes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys

import pytest

from ska_oso_oet.procedure import history, proctree
from ska_oso_oet.procedure.application import ArgCapture, ProcedureHistory, ProcedureSummary
from ska_oso_oet.procedure.gitmanager import GitArgs
from ska_oso_oet.procedure.scripts import FileSystemScript, GitScript, ProcedureInput
from ska_oso_oet.procedure.states import ProcedureState as S
from ska_oso_oet.procedure.ui.summary import summary_from_dict, summary_to_dict

T0 = 1_764_000_000.0
LIFE = [S.CREATING, S.IDLE, S.LOADING, S.IDLE, S.READY, S.RUNNING, S.READY, S.COMPLETE]


def made(pid: int, upto: S = S.COMPLETE, git: bool = False) -> ProcedureSummary:
    states = LIFE[: LIFE.index(upto) + 1] if upto in LIFE else [*LIFE[:6], upto]
    script = (
        GitScript("git://scans/x.py", git_args=GitArgs("https://127.0.0.1/r.git", "main", None))
        if git
        else FileSystemScript(f"file:///abs/p{pid}.py")
    )
    return ProcedureSummary(
        id=pid,
        script=script,
        script_args=[
            ArgCapture("init", ProcedureInput(1, subarray_id=pid)),
            ArgCapture("main", ProcedureInput(x=[1, 2])),
        ],
        history=ProcedureHistory([(s, T0 + i) for i, s in enumerate(states)], None),
        state=states[-1],
        progress={"fraction": 0.5, "message": "half", "time": T0},
        result={"ok": True},
    )


def test_a_summary_comes_back_as_it_was_given(tmp_path: pathlib.Path) -> None:
    for summary in (made(1), made(2, git=True)):
        again = summary_from_dict(json.loads(json.dumps(summary_to_dict(summary))))
        assert summary_to_dict(again) == summary_to_dict(summary)


def test_ended_procedures_come_back_and_ids_go_on(tmp_path: pathlib.Path) -> None:
    store = history.HistoryStore(tmp_path, history_limit=10)
    assert store.load() == history.Loaded([], 1, [])
    for pid in (1, 2, 3):
        store.put(made(pid, S.READY))
        store.put(made(pid))
    store.put_next_id(7)  # IDs 4..6 were given to procedures never kept (an abort, say)
    store.close()

    again = history.HistoryStore(tmp_path, history_limit=10)
    loaded = again.load()
    assert [s.id for s in loaded.summaries] == [1, 2, 3]
    assert [summary_to_dict(s) for s in loaded.summaries] == [
        summary_to_dict(made(p)) for p in (1, 2, 3)
    ]
    assert loaded.next_id == 7
    assert loaded.lost == []
    assert again.problem is None
    again.close()


def test_live_procedures_come_back_failed_saying_why(tmp_path: pathlib.Path) -> None:
    store = history.HistoryStore(tmp_path, history_limit=10)
    store.load()
    store.put(made(1))
    store.put(made(2, S.RUNNING))
    store.put(made(3, S.READY))
    store.close()

    second = history.HistoryStore(tmp_path, history_limit=10)
    loaded = second.load()
    second.close()
    assert loaded.lost == [2, 3]
    assert loaded.next_id == 4
    by_id = {s.id: s for s in loaded.summaries}
    assert by_id[1].state is S.COMPLETE
    for pid, was in ((2, "RUNNING"), (3, "READY")):
        summary = by_id[pid]
        assert summary.state is S.FAILED
        assert summary.history.process_states[-1][0] is S.FAILED
        assert summary.history.process_states[-2][0].name == was
        assert f"stopped while this procedure was {was}" in (summary.history.stacktrace or "")
    # and written so: the next start finds them FAILED, lost no more
    third = history.HistoryStore(tmp_path, history_limit=10)
    reloaded = third.load()
    assert reloaded.lost == []
    assert [s.state for s in reloaded.summaries] == [S.COMPLETE, S.FAILED, S.FAILED]
    third.close()


def test_only_the_newest_ended_procedures_are_kept(tmp_path: pathlib.Path) -> None:
    store = history.HistoryStore(tmp_path, history_limit=3)
    store.load()
    for pid in range(1, 9):
        store.put(made(pid))
    store.put(made(9, S.RUNNING))
    assert store.flush()
    rows = sqlite3.connect(tmp_path / history.FILE_NAME).execute("SELECT id FROM summaries")
    assert sorted(r[0] for r in rows) == [6, 7, 8, 9]  # 3 ended, and the live one
    store.close()
    loaded = history.HistoryStore(tmp_path, history_limit=3).load()
    assert [s.id for s in loaded.summaries] == [7, 8, 9]  # 9 ended (FAILED) meanwhile
    assert loaded.next_id == 10


@pytest.mark.parametrize(
    "damage",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + os.urandom(8000)],
)
def test_a_corrupt_store_is_moved_aside_and_the_device_starts_empty(
    tmp_path: pathlib.Path, damage: bytes
) -> None:
    (tmp_path / history.FILE_NAME).write_bytes(damage)
    store = history.HistoryStore(tmp_path, history_limit=10)
    loaded = store.load()
    assert loaded == history.Loaded([], 1, [])
    assert store.problem is not None and "moved to" in store.problem
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == damage  # kept, for whoever looks
    store.put(made(1))  # and the new store works
    store.close()
    again = history.HistoryStore(tmp_path, history_limit=10)
    assert [s.id for s in again.load().summaries] == [1]
    assert again.problem is None  # a clean start
    again.close()


def test_an_unreadable_row_is_skipped_not_fatal(tmp_path: pathlib.Path) -> None:
    store = history.HistoryStore(tmp_path, history_limit=10)
    store.load()
    store.put(made(1))
    store.put(made(2))
    store.close()
    with sqlite3.connect(tmp_path / history.FILE_NAME) as db:
        db.execute("UPDATE summaries SET summary = '{\"id\": 2}' WHERE id = 2")
    loaded = history.HistoryStore(tmp_path, history_limit=10).load()
    assert [s.id for s in loaded.summaries] == [1]
    assert loaded.next_id == 3  # its ID stays given


WRITER = """
import sys, time
from ska_oso_oet.procedure import history, proctree
from tests.test_history import made
from ska_oso_oet.procedure.states import ProcedureState as S
store = history.HistoryStore(sys.argv[1], history_limit=100000)
store.load()
pid = 0
while True:
    pid += 1
    store.put(made(pid, S.RUNNING))
    store.put(made(pid))
    if pid % 50 == 0:
        store.flush()
        print(pid, flush=True)  # everything up to pid is committed
"""


def test_kill_9_while_writing_loses_nothing_committed_and_never_corrupts(
    tmp_path: pathlib.Path,
) -> None:
    repo = pathlib.Path(__file__).resolve().parents[1]
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder)],
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            committed = 0
            for line in proc.stdout:
                committed = int(line)
                if committed >= 200 + 150 * round_:
                    break
            proc.send_signal(signal.SIGKILL)  # mid-write: the writer never stops
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert committed > 0
        with sqlite3.connect(folder / history.FILE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = history.HistoryStore(folder, history_limit=100000)
        loaded = store.load()
        store.close()
        ids = [s.id for s in loaded.summaries]
        assert store.problem is None
        assert ids[:committed] == list(range(1, committed + 1))  # every committed one is back
        assert all(s.state is S.COMPLETE for s in loaded.summaries[:committed])
        assert loaded.next_id >= committed + 1


# -- the device's side: a real device in a forked test context --------------------------------


def device_context(data: pathlib.Path, devices: list[str]):  # type: ignore[no-untyped-def]
    from tango.test_context import MultiDeviceTestContext

    from ska_oso_oet.tango.device import ObservationExecutionTool
    from tests.helpers import SCRIPTS

    props = {"ScriptRoots": [str(SCRIPTS)], "DataDirectory": str(data)}
    return MultiDeviceTestContext(
        [{"class": ObservationExecutionTool,
          "devices": [{"name": name, "properties": props} for name in devices]}],
        process=True,
    )  # fmt: skip


def _prepare_and_end(proxy, name: str = "hello.py") -> int:  # type: ignore[no-untyped-def]
    from tests.helpers import SCRIPTS, SummaryEvents

    events = SummaryEvents(proxy)
    pid = json.loads(proxy.Prepare(f"file://{SCRIPTS}/{name}"))["id"]
    events.wait_for(pid, {"READY"})
    proxy.StartProcedure(pid)
    events.wait_for(pid, {"COMPLETE"})
    events.close()
    return int(pid)


@pytest.mark.forked
@pytest.mark.tango
def test_two_devices_keep_separate_histories(tmp_path: pathlib.Path) -> None:
    names = ["oet/executor/1", "oet/executor/2"]
    with device_context(tmp_path, names) as context:
        one, two = (context.get_device(n) for n in names)
        first = _prepare_and_end(one)
        assert json.loads(two.Summarise("")) == []
    with device_context(tmp_path, names) as context:  # the server started again
        one, two = (context.get_device(n) for n in names)
        assert [s["id"] for s in json.loads(one.Summarise(""))] == [first]
        assert json.loads(two.Summarise("")) == []
        assert _prepare_and_end(two) == 1  # its own IDs: it never gave one
        assert _prepare_and_end(one) == first + 1
    folders = sorted(p.name for p in (tmp_path / "devices").iterdir())
    assert folders == ["oet.executor.1", "oet.executor.2"]


@pytest.mark.forked
@pytest.mark.tango
def test_a_corrupt_store_leaves_the_device_degraded_not_down(tmp_path: pathlib.Path) -> None:
    import tango

    from ska_oso_oet.tango.ska import HealthState

    store = tmp_path / "devices" / "oet.executor.1" / history.FILE_NAME
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x00garbage, not a database" * 64)
    with device_context(tmp_path, ["oet/executor/1"]) as context:
        device = context.get_device("oet/executor/1")
        assert device.state() == tango.DevState.ON  # it started, with an empty history
        assert device.healthState == HealthState.DEGRADED
        assert json.loads(device.Summarise("")) == []
        assert _prepare_and_end(device) == 1  # and works
    assert [p for p in store.parent.iterdir() if ".corrupt-" in p.name]  # kept for a look
    with device_context(tmp_path, ["oet/executor/1"]) as context:  # the next clean start
        device = context.get_device("oet/executor/1")
        assert device.healthState == HealthState.OK
        assert [s["id"] for s in json.loads(device.Summarise(""))] == [1]


def test_a_store_locked_by_another_process_is_left_alone_and_catches_up(
    tmp_path: pathlib.Path,
) -> None:
    store = history.HistoryStore(tmp_path, history_limit=10)
    store.load()
    store.put(made(1))
    store.close()
    holder = subprocess.Popen(  # another process holds the write lock
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         f"db = sqlite3.connect({str(tmp_path / history.FILE_NAME)!r}, isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         "sys.stdin.readline()\n"
         "db.execute('ROLLBACK')\n"
         "print('released', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = history.HistoryStore(tmp_path, history_limit=10, busy_timeout=0.2)
        assert [s.id for s in busy.load().summaries] == [1]  # reading works
        busy.put(made(2))
        assert busy.flush()
        assert busy.problem is not None and "cannot be written" in busy.problem
        assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]  # left alone
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert proctree.poll_until(lambda: _ids_on_disk(tmp_path) == [1, 2], 10)  # retried
        busy.close()
    finally:
        holder.communicate("", timeout=20)


def _ids_on_disk(folder: pathlib.Path) -> list[int]:
    with sqlite3.connect(folder / history.FILE_NAME) as db:
        return sorted(r[0] for r in db.execute("SELECT id FROM summaries"))


def test_a_store_that_cannot_be_opened_is_left_as_it_is(tmp_path: pathlib.Path) -> None:
    (tmp_path / history.FILE_NAME).mkdir()  # cannot be opened, yet not a damaged database
    (tmp_path / history.FILE_NAME / "keep").write_text("mine")
    store = history.HistoryStore(tmp_path, history_limit=10)
    assert store.problem is not None and "left as it is" in store.problem
    assert store.load().summaries == []
    store.close()
    assert (tmp_path / history.FILE_NAME / "keep").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_ids_go_on_even_after_a_damaged_store_was_moved_aside(tmp_path: pathlib.Path) -> None:
    store = history.HistoryStore(tmp_path, history_limit=10)
    store.load()
    for pid in range(1, 6):
        store.put(made(pid))
    store.close()
    (tmp_path / history.FILE_NAME).write_bytes(b"damaged beyond repair" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / (history.FILE_NAME + suffix)).unlink(missing_ok=True)
    again = history.HistoryStore(tmp_path, history_limit=10)
    loaded = again.load()
    again.close()
    assert again.problem is not None and "moved to" in again.problem
    assert loaded.summaries == []
    assert loaded.next_id == 6  # an ID never names two procedures
