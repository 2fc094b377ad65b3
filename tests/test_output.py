"""Script output and script messages: captured at the file-descriptor level by real workers,
kept on disk (bounded), paged with GetOutput and pushed as events to real subscribers."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ska_oso_oet.procedure import output
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ScriptExecutionService,
    StartProcessCommand,
)
from ska_oso_oet.procedure.scripts import FileSystemScript, ProcedureInput
from ska_oso_oet.procedure.states import ProcedureState
from tests.helpers import (
    REPO,
    Oet,
    SummaryEvents,
    joined,
    prepare_request,
    run_oet,
    start_request,
)

TIMEOUT = 30
FINAL = {"COMPLETE", "STOPPED", "FAILED"}

# Everything a script can write, one of each, in a known order.
EVERY_KIND = """
import logging, os, subprocess, sys
from pubsub import pub

def main(tag="x"):
    print(f"out {tag}")
    print(f"err {tag}", file=sys.stderr)
    subprocess.run(["echo", f"child {tag}"], check=True)
    os.system(f"echo shell {tag} 1>&2")
    logging.getLogger("obs").warning("log %s", tag)
    pub.sendMessage("user.script.announce", msg_src="every", msg=f"hello {tag}", obj=object())
    sys.stdout.write(f"after {tag}\\n")
"""

EXPECTED = [
    ("stdout", "out {t}"),
    ("stderr", "err {t}"),
    ("stdout", "child {t}"),
    ("stderr", "shell {t}"),
    ("log", "log {t}"),
    ("message", "hello {t}"),
    ("stdout", "after {t}"),
]


class Collector:
    """An output listener of the service: every batch and message, in order."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def lines(self, pid: int) -> list[dict[str, Any]]:
        with self.cond:
            return [
                json.loads(text)
                for item in self.items
                if isinstance(item, output.OutputBatch) and item.id == pid
                for text in item.lines
            ]

    def sequence(self, pid: int) -> list[tuple[str, str]]:
        """(stream or "message", text) of everything that arrived for ``pid``, in order."""
        seen: list[tuple[str, str]] = []
        with self.cond:
            for item in self.items:
                if item.id != pid:
                    continue
                if isinstance(item, output.ScriptMessage):
                    seen.append(("message", item.data.get("msg", "")))
                else:
                    for text in item.lines:
                        line = json.loads(text)
                        seen.append((line["stream"], line["text"]))
        return seen


def write_script(tmp_path: pathlib.Path, name: str, text: str) -> FileSystemScript:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return FileSystemScript(f"file://{path}")


def run(
    ses: ScriptExecutionService, script: FileSystemScript, **kwargs: Any
) -> tuple[int, ProcedureState]:
    pid = ses.prepare(PrepareProcessCommand(script)).id
    ses.wait_for_state(pid, ProcedureState.READY, TIMEOUT)
    ses.start(StartProcessCommand(pid, "main", ProcedureInput(**kwargs)))
    final = ses.wait_for_state(pid, {ProcedureState.COMPLETE, ProcedureState.FAILED}, TIMEOUT)
    return pid, final.state


def all_output(ses: ScriptExecutionService, pid: int) -> tuple[list[dict[str, Any]], int]:
    """Every kept line, paged with since, and the dropped count."""
    lines: list[dict[str, Any]] = []
    since = 0
    dropped = 0
    while True:
        page = ses.get_output(pid, since)
        dropped = page["dropped"]
        if not page["lines"]:
            return lines, dropped
        assert page["lines"][0]["seq"] >= since
        lines += page["lines"]
        since = page["next"]


@pytest.fixture
def service(make_service: Any, tmp_path: pathlib.Path) -> Iterator[tuple[Any, Collector]]:
    ses = make_service(data_dir=str(tmp_path / "data"))
    collector = Collector()
    ses.add_output_listener(collector)
    yield ses, collector


# -- lines -----------------------------------------------------------------------------------


def test_partial_long_and_broken_lines_are_split_safely() -> None:
    s = output._Splitter()
    assert s.feed(b"one\ntw", 0.0) == ["one"]
    assert s.feed(b"o\r\nthree", 0.0) == ["two"]
    assert s.stale(0.1) is None  # a partial line waits for its end...
    assert s.stale(output.PARTIAL_WAIT + 0.01) == "three"  # ...for a while only
    assert s.feed(b"bad \xff\xfe bytes\n", 1.0) == ["bad \ufffd\ufffd bytes"]
    assert s.feed(b" 10%\r 50%\r100%\r\n", 1.0) == ["100%"]  # a progress bar: what it shows
    long = b"x" * (output.MAX_LINE + 10)
    [cut] = s.feed(long[:100], 2.0) + s.feed(long[100:], 2.0)
    assert cut.startswith("x" * output.MAX_LINE) and "line cut" in cut
    assert s.feed(b"yyy\nnext\n", 2.0) == ["next"]  # the rest of the cut line is left out
    assert s.rest() is None


# -- real workers --------------------------------------------------------------------------------


def test_everything_a_script_writes_arrives_in_order_with_its_id(
    service: tuple[ScriptExecutionService, Collector], tmp_path: pathlib.Path
) -> None:
    ses, got = service
    script = write_script(tmp_path, "every.py", EVERY_KIND)
    first, state = run(ses, script, tag="a")
    assert state is ProcedureState.COMPLETE
    second, _ = run(ses, script, tag="b")
    for pid, tag in ((first, "a"), (second, "b")):
        assert got.sequence(pid) == [(s, t.format(t=tag)) for s, t in EXPECTED]
        lines = got.lines(pid)
        assert [line["seq"] for line in lines] == list(range(len(lines)))
        log = next(line for line in lines if line["stream"] == "log")
        assert log["level"] == "WARNING" and log["logger"] == "obs"
        # GetOutput has the same lines as the events, the whole output
        stored, dropped = all_output(ses, pid)
        assert stored == lines and dropped == 0
    message = next(i for i in got.items if isinstance(i, output.ScriptMessage))
    assert message.id == first and message.topic == "user.script.announce"
    assert message.msg_src == "every"
    assert message.data["obj"].startswith("<object object at")  # not JSON: its repr
    json.loads(message.to_json())


def test_get_output_pages_a_long_output_with_no_gap(
    service: tuple[ScriptExecutionService, Collector], tmp_path: pathlib.Path
) -> None:
    ses, got = service
    n = 3 * output.MAX_PAGE_LINES + 17
    script = write_script(
        tmp_path,
        "long.py",
        f"""
        def main():
            for i in range({n}):
                print(f"line {{i}}")
        """,
    )
    pid, _ = run(ses, script)
    pages = 0
    since = 0
    texts: list[str] = []
    while True:
        page = ses.get_output(pid, since)
        assert len(page["lines"]) <= output.MAX_PAGE_LINES
        if not page["lines"]:
            break
        pages += 1
        assert [line["seq"] for line in page["lines"]] == list(
            range(since, since + len(page["lines"]))
        )
        texts += [line["text"] for line in page["lines"]]
        since = page["next"]
    assert pages >= 4
    assert texts == [f"line {i}" for i in range(n)]
    assert ses.get_output(pid, since) == {"id": pid, "lines": [], "next": n, "dropped": 0}
    # the events carried each line once, in order, or said how many they left out
    carried = got.lines(pid)
    skipped = sum(i.skipped for i in got.items if isinstance(i, output.OutputBatch))
    assert len(carried) + skipped == n
    assert all(texts[line["seq"]] == line["text"] for line in carried)
    assert [line["seq"] for line in carried] == sorted({line["seq"] for line in carried})


def test_the_bound_drops_the_oldest_lines_and_counts_them(
    make_service: Any, tmp_path: pathlib.Path
) -> None:
    ses = make_service(data_dir=str(tmp_path / "data"), output_limit=20_000)
    n = 5000
    script = write_script(
        tmp_path,
        "many.py",
        f"""
        def main():
            for i in range({n}):
                print(f"line {{i}}")
        """,
    )
    pid, _ = run(ses, script)
    lines, dropped = all_output(ses, pid)
    assert dropped > 0 and dropped + len(lines) == n
    assert lines[0]["seq"] == dropped  # the oldest went first
    assert [line["text"] for line in lines] == [f"line {i}" for i in range(dropped, n)]
    kept = sum(f.stat().st_size for f in (tmp_path / "data" / "output").iterdir())
    assert kept <= 20_000


def test_unkind_scripts_are_captured_without_harm(
    service: tuple[ScriptExecutionService, Collector], tmp_path: pathlib.Path
) -> None:
    ses, got = service
    script = write_script(
        tmp_path,
        "unkind.py",
        f"""
        import os, sys, time

        def main():
            sys.stdout.write("no newline yet")
            sys.stdout.flush()
            time.sleep({output.PARTIAL_WAIT + 0.3})
            os.write(1, b"y" * 100000 + b"\\n")
            os.write(2, b"\\xff\\xfe not utf-8 \\x1b[31m\\n")
            os.close(1)  # its own stdout, gone
            try:
                print("lost")
            except OSError:
                pass
            print("stderr still works", file=sys.stderr)
            sys.stderr.write("partial at the end")
        """,
    )
    pid, state = run(ses, script)
    assert state is ProcedureState.COMPLETE
    lines = got.lines(pid)
    texts = [line["text"] for line in lines]
    assert texts[0] == "no newline yet"  # shown before its end came
    assert lines[0]["time"] < lines[1]["time"] - output.PARTIAL_WAIT + 0.5
    assert texts[1].startswith("y" * output.MAX_LINE) and "line cut" in texts[1]
    assert len(texts[1]) < output.MAX_LINE + 200
    assert texts[2] == "\ufffd\ufffd not utf-8 \x1b[31m"
    assert texts[3:] == ["stderr still works", "partial at the end"]
    assert [line["stream"] for line in lines] == ["stdout", "stdout", "stderr", "stderr", "stderr"]


def test_logging_records_are_lines_whatever_the_script_configures(
    service: tuple[ScriptExecutionService, Collector], tmp_path: pathlib.Path
) -> None:
    ses, got = service
    script = write_script(
        tmp_path,
        "logs.py",
        """
        import logging

        def main():
            logging.info("plain info")  # no handler configured: a log line, no stderr echo
            logging.basicConfig(format="BASIC %(message)s", force=True)
            mine = logging.getLogger("mine")
            mine.propagate = False
            mine.addHandler(logging.NullHandler())
            mine.error("to my own handler only")
            try:
                1 / 0
            except ZeroDivisionError:
                logging.exception("failed")
            logging.getLogger("big").warning("\u00e9\x01" * 20000)
        """,
    )
    pid, _ = run(ses, script)
    seen = [(line["stream"], line.get("level"), line["text"]) for line in got.lines(pid)]
    assert seen[0] == ("log", "INFO", "plain info")
    assert seen[1] == ("log", "ERROR", "to my own handler only")
    stream, level, text = seen[2]
    assert (stream, level) == ("log", "ERROR")
    assert text.startswith("failed\nTraceback") and "ZeroDivisionError" in text
    # the script's own basicConfig handler printed the record to stderr, as it asked
    assert seen[3][0] == "stderr" and seen[3][2] == "BASIC failed"
    big = [x for x in got.lines(pid) if x.get("logger") == "big"]
    assert len(big) == 1 and big[0]["level"] == "WARNING"  # a long record stays one record
    assert (
        big[0]["text"].startswith("\u00e9\x01" * 100) and "cut: the record had" in big[0]["text"]
    )


def test_own_topics_are_not_repeated_as_messages(
    service: tuple[ScriptExecutionService, Collector], tmp_path: pathlib.Path
) -> None:
    ses, got = service
    script = write_script(
        tmp_path,
        "topics.py",
        """
        from pubsub import pub

        def main():
            pub.sendMessage("operator.wait_for_qa_ready.enable", msg_src="script")
            pub.sendMessage("user.script.announce", msg_src="script", msg="mine")
            pub.sendMessage("user.script.big", msg_src="script", blob="x" * 1_000_000)
        """,
    )
    pid, _ = run(ses, script)
    messages = [i for i in got.items if isinstance(i, output.ScriptMessage)]
    assert [(m.id, m.topic) for m in messages] == [
        (pid, "user.script.announce"),
        (pid, "user.script.big"),
    ]
    assert messages[0].data == {"msg": "mine"}
    big = messages[1].data  # every client gets it: bounded, saying so
    assert big["cut"].startswith('{"blob": "xxx') and "1000012 bytes" in big["note"]
    assert len(messages[1].to_json()) < output.MAX_MESSAGE_BYTES


def test_forgotten_procedures_take_their_output_with_them(
    make_service: Any, tmp_path: pathlib.Path
) -> None:
    ses = make_service(data_dir=str(tmp_path / "data"), history_limit=1)
    script = write_script(tmp_path, "hi.py", "def main():\n    print('hi')\n")
    first, _ = run(ses, script)
    assert ses.get_output(first)["lines"][0]["text"] == "hi"
    second, _ = run(ses, script)
    folder = tmp_path / "data" / "output"
    assert sorted(p.name.split(".")[0] for p in folder.iterdir()) == [str(second)]


def test_a_service_without_data_dir_cleans_up(make_service: Any, tmp_path: pathlib.Path) -> None:
    ses = make_service()
    directory = pathlib.Path(ses._output.directory).parent
    pid, _ = run(ses, write_script(tmp_path, "hi.py", "def main():\n    print('hi')\n"))
    assert ses.get_output(pid)["lines"][0]["text"] == "hi"
    ses.shutdown()
    assert not directory.exists()


def test_get_output_requests_are_checked() -> None:
    assert output.parse_get_output('{"id": 3}') == (3, 0)
    assert output.parse_get_output('{"id": 3, "since": 7}') == (3, 7)
    for bad in ("", "[]", '{"id": "3"}', '{"id": 1, "since": -1}', '{"id": true}', '{"x": 1}'):
        with pytest.raises(ValueError, match="GetOutput takes"):
            output.parse_get_output(bad)


def test_the_rest_stream_carries_output_and_messages_with_their_topic(
    make_service: Any, tmp_path: pathlib.Path
) -> None:
    import httpx

    from ska_oso_oet.procedure.ui import server

    ses = make_service(data_dir=str(tmp_path / "data"))
    srv = server.RestServer(ses, "127.0.0.1", 0)
    srv.start()
    events: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
            with http.stream("GET", "/stream") as response:
                lines = response.iter_lines()
                assert next(lines).startswith(": connected")
                pid, _ = run(ses, write_script(tmp_path, "every.py", EVERY_KIND), tag="r")
                for line in lines:
                    if line.startswith("data: "):
                        events.append(json.loads(line[len("data: ") :]))
                        if events[-1].get("new_state") == "COMPLETE":
                            break
    finally:
        srv.stop()
    seen = []
    for event in events:
        if event["topic"] == output.OUTPUT_TOPIC:
            assert event["id"] == pid
            seen += [(x["stream"], x["text"]) for x in event["lines"]]
        elif event["topic"] == "user.script.announce":
            assert event["id"] == pid and event["msg_src"] == "every"
            seen.append(("message", event["data"]["msg"]))
    assert seen == [(s, t.format(t="r")) for s, t in EXPECTED]


# -- a real device, real subscribers -------------------------------------------------------

tango = pytest.importorskip("tango")


#: The full address (TRL) of the device of each test, for the CLI.
ADDRESS: dict[str, str] = {}


@pytest.fixture
def device(tmp_path: pathlib.Path) -> Iterator[Any]:
    from tango.test_context import DeviceTestContext

    from ska_oso_oet.tango.device import ObservationExecutionTool

    properties = {
        "ScriptRoots": [str(tmp_path)],
        "StopGracePeriod": 1.0,
        "DataDirectory": str(tmp_path / "data"),
        "MaxRunning": 2,
    }
    context = DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=properties
    )
    with context as proxy:
        ADDRESS["device"] = context.get_device_access()
        yield proxy


class Events:
    """Every change event of one attribute, parsed; the first (the value at subscription)
    is kept apart."""

    def __init__(self, proxy: Any, name: str) -> None:
        self.proxy = proxy
        self.values: list[Any] = []
        self.arrivals: list[float] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.first = True
        self.id = proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, self._callback)
        joined(proxy)  # an event pushed before the subscription joins would be lost

    def _callback(self, event: Any) -> None:
        with self.cond:
            if event.err:
                self.errors.append(event.errors[0].desc)
            elif self.first:
                self.first = False
            else:
                self.values.append(json.loads(event.attr_value.value))
                self.arrivals.append(time.monotonic())
            self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float = TIMEOUT) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.values), timeout), self.values[-3:]

    def close(self) -> None:
        self.proxy.unsubscribe_event(self.id)


def prepare(proxy: Any, path: pathlib.Path) -> int:
    return int(json.loads(proxy.Prepare(prepare_request(path)))["id"])


def start(proxy: Any, pid: int, **kwargs: Any) -> None:
    proxy.Start(start_request(pid, force_start=True, **kwargs))


def lines_of(events: Events, pid: int) -> list[dict[str, Any]]:
    with events.cond:
        return [line for v in events.values if v["id"] == pid for line in v["lines"]]


@pytest.mark.forked
@pytest.mark.tango
def test_device_pushes_output_and_messages_to_every_subscriber(
    device: Any, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "every.py"
    path.write_text(textwrap.dedent(EVERY_KIND))
    outs = [Events(device, "procedureOutput"), Events(device, "procedureOutput")]
    messages = Events(device, "procedureMessages")
    summaries = SummaryEvents(device)
    pid = prepare(device, path)
    start(device, pid, tag="t")
    summaries.wait_for(pid, FINAL, timeout=TIMEOUT)
    expected = [(s, t.format(t="t")) for s, t in EXPECTED if s != "message"]
    for sub in outs:
        sub.wait(lambda values, sub=sub: len(lines_of(sub, pid)) == len(expected))
        assert [(x["stream"], x["text"]) for x in lines_of(sub, pid)] == expected
        assert sub.errors == []
    messages.wait(lambda values: len(values) == 1)
    [msg] = messages.values
    assert msg["id"] == pid and msg["topic"] == "user.script.announce"
    assert msg["msg_src"] == "every" and msg["data"]["msg"] == "hello t"
    reply = json.loads(device.GetOutput(json.dumps({"id": pid, "since": 2})))
    assert reply["id"] == pid and reply["dropped"] == 0
    assert [x["seq"] for x in reply["lines"]] == list(range(2, len(expected)))
    assert reply["next"] == len(expected)
    assert json.loads(device.procedureOutput)["id"] == pid
    for bad, reason in (
        ('{"id": 1, "since": "x"}', "OET_InvalidRequest"),
        ("not json", "OET_InvalidRequest"),
        ('{"id": 999}', "OET_UnknownProcedure"),
    ):
        with pytest.raises(tango.DevFailed) as info:
            device.GetOutput(bad)
        assert info.value.args[0].reason == reason
    kept = list((tmp_path / "data" / "devices" / "oet.executor.1" / "output").iterdir())
    assert kept  # under DataDirectory, in the device's own folder


FLOOD = """
import sys, time

def main(seconds=1.5):
    end = time.monotonic() + seconds
    i = 0
    write = sys.stdout.write
    while time.monotonic() < end:
        for _ in range(100):
            write(f"flood line {i}\\n")
            i += 1
    print(f"total {i}")
"""


@pytest.mark.forked
@pytest.mark.tango
def test_a_flood_of_output_leaves_the_device_responsive(
    device: Any, tmp_path: pathlib.Path
) -> None:
    flood_path = tmp_path / "flood.py"
    flood_path.write_text(textwrap.dedent(FLOOD))
    quick_path = tmp_path / "quick.py"
    quick_path.write_text("def main():\n    print('quick')\n")
    outs = Events(device, "procedureOutput")
    summaries = SummaryEvents(device)
    flood = prepare(device, flood_path)
    quick = prepare(device, quick_path)
    summaries.wait_for(quick, "READY", timeout=TIMEOUT)
    begin = time.monotonic()
    start(device, flood, seconds=2.0)
    outs.wait(lambda values: any(v["id"] == flood for v in values))
    t0 = time.monotonic()
    start(device, quick)
    summaries.wait_for(quick, FINAL, timeout=10)
    assert time.monotonic() - t0 < 2.5  # while the flood goes on
    assert device.State() in (tango.DevState.ON, tango.DevState.RUNNING)
    summaries.wait_for(flood, FINAL, timeout=TIMEOUT)
    duration = time.monotonic() - begin
    with outs.cond:
        batches = [v for v in outs.values if v["id"] == flood]
    # batched: at most one event per 50 ms (and a last one), each bounded
    assert len(batches) <= duration / output.BATCH_INTERVAL + 5
    assert all(len(b["lines"]) <= output.MAX_EVENT_LINES for b in batches)
    seqs = [line["seq"] for b in batches for line in b["lines"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    skipped = sum(b.get("skipped", 0) for b in batches)
    assert len(seqs) + skipped == seqs[-1] + 1  # every line in an event or counted skipped
    total = int(batches[-1]["lines"][-1]["text"].split()[-1])
    assert seqs[-1] == total  # the last line, "total N", follows the N flood lines
    assert lines_of(outs, quick) and lines_of(outs, quick)[0]["text"] == "quick"


def oet_cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ska_oso_oet.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def read_until(proc: subprocess.Popen[str], *words: str, timeout: float = TIMEOUT) -> list[str]:
    """The lines ``proc`` prints until each of ``words`` has been in one of them."""
    got: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line.rstrip("\n"))
            if all(any(w in g for g in got) for w in words):
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), got
    return got


@pytest.mark.forked
@pytest.mark.tango
def test_oet_logs_and_follow(device: Any, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "slow.py"
    path.write_text(
        textwrap.dedent(
            """
            import sys, time

            def main(n=60):
                for i in range(n):
                    print(f"slow {i}")
                    if i % 10 == 0:
                        print(f"warn {i}", file=sys.stderr)
                    time.sleep(0.01)
            """
        )
    )
    address = ADDRESS["device"]
    summaries = SummaryEvents(device)
    outs = Events(device, "procedureOutput")
    pid = prepare(device, path)
    summaries.wait_for(pid, "READY", timeout=TIMEOUT)
    start(device, pid)
    # the follower joins part way, once a first batch is out: the stored part, then the live part
    outs.wait(lambda values: any(v["id"] == pid for v in values))
    follow = oet_cli("--device", address, "logs", str(pid), "--follow")
    try:
        out, err = follow.communicate(timeout=TIMEOUT)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    expected = []
    for i in range(60):
        expected.append(f"slow {i}")
        if i % 10 == 0:
            expected.append(f"warn {i}")
    texts = [line.split(" ", 2)[2] for line in out.splitlines()]
    assert texts == expected  # no gap, no duplicate, in order
    assert out.splitlines()[1].split()[1] == "stderr"
    done = run_oet(address, "logs", str(pid), timeout=TIMEOUT)
    assert done.returncode == 0 and done.stdout == out
    as_json = run_oet(address, "--json", "logs", str(pid), timeout=TIMEOUT)
    assert [json.loads(x)["text"] for x in as_json.stdout.splitlines()] == expected
    missing = run_oet(address, "logs", "999", timeout=TIMEOUT)
    assert missing.returncode != 0 and "999" in missing.stderr


@pytest.mark.forked
@pytest.mark.tango
def test_oet_listen_messages(device: Any, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "every.py"
    path.write_text(textwrap.dedent(EVERY_KIND))
    listen = oet_cli("--device", ADDRESS["device"], "listen", "--messages")
    try:
        read_until(listen, "Listening")
        pid = prepare(device, path)
        start(device, pid, tag="z")
        got = read_until(listen, "COMPLETE", " message ", "after z")
    finally:
        listen.terminate()
        listen.wait(10)
    message = next(line for line in got if " message " in line)
    assert message.startswith(f"[{pid}] ") and "user.script.announce (from every)" in message
    assert '"msg": "hello z"' in message
    shown = [line for line in got if line.startswith(f"[{pid}] ") and " message " not in line]
    assert [line.split(" ", 3)[2] for line in shown] == [s for s, _ in EXPECTED if s != "message"]


def test_output_kept_by_an_earlier_hub_is_read_back_and_forgotten(tmp_path: pathlib.Path) -> None:
    """The durable history: a later server reads what an earlier one kept, and drops it with
    the procedure."""
    first = output.OutputHub(str(tmp_path), 4096)
    first.feed(7, "stdout", b"".join(b"line %d\n" % i for i in range(1000)))
    first.end(7)
    kept = first.get_output(7)
    first.close()
    assert kept["dropped"] > 0 and kept["lines"][-1]["text"] == "line 999"
    later = output.OutputHub(str(tmp_path), 4096)
    assert later.get_output(7) == kept
    assert later.get_output(8) == {"id": 8, "lines": [], "next": 0, "dropped": 0}
    later.forget(7)
    assert later.get_output(7)["lines"] == [] and not list((tmp_path / "output").iterdir())
    later.close()
    # a service that numbers from 1 again (no durable history) writes over an old ID's lines
    old = output.OutputHub(str(tmp_path), 4096)
    old.feed(1, "stdout", b"old\n")
    old.end(1)
    old.close()
    again = output.OutputHub(str(tmp_path), 4096)
    again.feed(1, "stdout", b"new\n")
    again.end(1)
    assert [x["text"] for x in again.get_output(1)["lines"]] == ["new"]
    again.close()


# -- from a shell, against a server on a Tango database, as `make run` serves it ---------------


@pytest.mark.tango
def test_oet_logs_from_a_shell_against_a_server_on_a_database(oet: Oet) -> None:
    prepared = oet.cli("--json", "prepare", "scripts/long_running.py", cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr + oet.log_tail()
    pid = json.loads(prepared.stdout)["id"]
    started = oet.cli("start", str(pid), "--kwarg", "duration=1.5", "--kwarg", "interval=0.1")
    assert started.returncode == 0, started.stderr
    follow = oet.cli("--json", "logs", str(pid), "--follow")  # returns when the procedure ends
    assert follow.returncode == 0, follow.stderr
    lines = [json.loads(x) for x in follow.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(len(lines)))  # no gap, no line twice
    assert lines[0]["text"] == "long_running:   0.0 of 1.5 s"
    assert lines[-1]["text"] == "long_running: finished after 1.5 s"
    assert len(lines) >= 10
    shown = oet.cli("logs", str(pid))
    assert shown.returncode == 0
    assert [x.split(" ", 2)[2] for x in shown.stdout.splitlines()] == [x["text"] for x in lines]
