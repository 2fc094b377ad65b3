"""Hostile requests and hostile scripts, tried against a real device (DeviceTestContext, each
test forked): bounded requests, strict JSON in and out, the script that runs is the file that
was checked, a forged message fails only its own procedure, and a fuzz of generated requests
gets only documented answers while the device stays ON."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet.procedure import settings
from ska_oso_oet.tango.device import ObservationExecutionTool
from tests.helpers import SCRIPTS, TIMEOUT, SummaryEvents, free_port, prepare_request

pytestmark = [pytest.mark.forked, pytest.mark.tango]

FINAL = {"COMPLETE", "STOPPED", "FAILED"}
#: The reasons of a refusal the contract documents for a bad request.
DOCUMENTED = {"OET_InvalidRequest", "OET_UnknownProcedure", "OET_Refused"}


def strict(text: str) -> Any:
    """Parse as a browser would: NaN, Infinity and -Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


class StrictEvents:
    """Every change event of the device's JSON attributes, each parsed strictly; what did not
    parse is kept in ``bad``."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.proxy = proxy
        self.count = 0
        self.bad: list[str] = []
        self._lock = threading.Lock()
        names = set(proxy.get_attribute_list())
        wanted = ["procedureSummaries", "procedureChange", "procedureMessages", "procedureOutput"]
        self._ids = [
            proxy.subscribe_event(n, tango.EventType.CHANGE_EVENT, self._callback)
            for n in wanted
            if n in names
        ]

    def _callback(self, event: Any) -> None:
        if event.err:
            return
        value = event.attr_value.value
        with self._lock:
            self.count += 1
            try:
                strict(value or "null")
            except ValueError as exc:
                self.bad.append(f"{event.attr_name}: {exc}: {str(value)[:200]}")

    def close(self) -> None:
        for i in self._ids:
            try:
                self.proxy.unsubscribe_event(i)
            except tango.DevFailed:
                pass


@pytest.fixture
def root(tmp_path) -> Any:
    path = tmp_path / "root"
    path.mkdir()
    return path


def start_device(tmp_path, root, **properties: Any) -> Any:
    props = {"ScriptRoots": [str(SCRIPTS), str(root)], "StopGracePeriod": 1.0, **properties}
    return DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=props
    )


@pytest.fixture
def device(tmp_path, root) -> Iterator[tango.DeviceProxy]:
    with start_device(tmp_path, root) as proxy:
        yield proxy


def refusal(call: Any, *args: Any) -> tango.DevError:
    with pytest.raises(tango.DevFailed) as caught:
        call(*args)
    return caught.value.args[0]


def ready(device, events: SummaryEvents, name: str = "hello.py") -> int:
    pid = strict(device.Prepare(prepare_request(name)))["id"]
    events.wait_for(pid, {"READY"})
    return pid


def assert_serving(device) -> None:
    """The device is ON and still prepares and runs a script."""
    events = SummaryEvents(device)
    try:
        pid = ready(device, events)
        device.Start(json.dumps({"id": pid}))
        assert events.wait_for(pid, FINAL)["state"] == "COMPLETE"
    finally:
        events.close()
    assert device.state() == tango.DevState.ON


# -- bounded requests ----------------------------------------------------------------------------


def test_a_request_over_max_request_size_is_refused_before_it_is_parsed(device):
    limit = settings.default("max_request_size")
    huge = prepare_request("hello.py", "x" * (10 * 1024 * 1024))  # the attacker's 10 MB
    for command in ("Prepare", "Start", "Stop", "Summarise"):
        err = refusal(getattr(device, command), huge)
        assert err.reason == "OET_InvalidRequest"
        assert "MaxRequestSize" in err.desc and str(limit) in err.desc, err.desc
    assert strict(device.Summarise("")) == []  # nothing was kept
    assert_serving(device)


def test_arguments_over_max_argument_size_are_refused_and_nothing_is_kept(device):
    events = SummaryEvents(device)
    limit = settings.default("max_argument_size")
    big = "x" * limit  # its JSON, with the quotes and brackets, is just over the limit
    err = refusal(device.Prepare, prepare_request("hello.py", big))
    assert err.reason == "OET_InvalidRequest"
    assert "MaxArgumentSize" in err.desc and str(limit) in err.desc, err.desc
    assert strict(device.Summarise("")) == []
    pid = ready(device, events)
    err = refusal(device.Start, json.dumps({"id": pid, "run_args": {"kwargs": {"blob": big}}}))
    assert err.reason == "OET_InvalidRequest" and "MaxArgumentSize" in err.desc
    (summary,) = strict(device.Summarise(json.dumps([pid])))
    assert summary["state"] == "READY" and "main" not in summary["script_args"]
    # just under the limit is accepted
    fits = "x" * (limit - 100)
    device.Start(json.dumps({"id": pid, "run_args": {"args": [fits]}}))
    assert events.wait_for(pid, FINAL)["state"] == "COMPLETE"
    events.close()


def test_the_limits_are_device_properties(tmp_path, root):
    with start_device(
        tmp_path, root, MaxRequestSize=2000, MaxArgumentSize=100, MaxSummariseIds=3
    ) as device:
        err = refusal(device.Summarise, json.dumps([1] * 1000))  # 3000 bytes
        assert "2000" in err.desc and "MaxRequestSize" in err.desc
        err = refusal(device.Prepare, prepare_request("hello.py", "y" * 100))
        assert "100" in err.desc and "MaxArgumentSize" in err.desc
        err = refusal(device.Summarise, "[1, 2, 3, 4]")
        assert err.reason == "OET_InvalidRequest"
        assert "4 distinct" in err.desc and "MaxSummariseIds" in err.desc, err.desc
        err = refusal(device.Summarise, "[1, 2, 3, 3, 3]")  # 3 distinct: allowed; unknown
        assert err.reason == "OET_UnknownProcedure"


def test_procedures_not_yet_ended_are_bounded_and_the_abort_script_still_runs(tmp_path, root):
    (root / "abort.py").write_text(
        "def init(subarray_id=None):\n    pass\n\n\ndef main():\n    pass\n"
    )
    with start_device(
        tmp_path, root, MaxProcedures=2, AbortScript=f"file://{root}/abort.py"
    ) as device:
        events = SummaryEvents(device)
        sleeper = ready(device, events, "sleeper.py")
        hello = ready(device, events)
        err = refusal(device.Prepare, prepare_request("hello.py"))
        assert err.reason == "OET_Refused" and "MaxProcedures" in err.desc, err.desc
        device.Start(json.dumps({"id": sleeper}))
        events.wait_for(sleeper, {"RUNNING"})
        (abort,) = strict(device.Stop(json.dumps({"id": sleeper, "run_abort": True})))
        assert events.wait_for(abort["id"], FINAL)["state"] == "COMPLETE"
        device.Start(json.dumps({"id": hello}))
        assert events.wait_for(hello, FINAL)["state"] == "COMPLETE"
        assert_serving(device)  # room again
        events.close()


def test_summarise_answers_a_duplicated_id_once_and_quickly(device):
    events = SummaryEvents(device)
    pid = ready(device, events)
    copies = json.dumps([pid] * 200_000)  # the attacker's 200 000 copies (600 kB)
    began = time.perf_counter()
    reply = strict(device.Summarise(copies))
    took = time.perf_counter() - began
    assert [s["id"] for s in reply] == [pid]  # answered once
    assert took < 2.0, f"Summarise of 200 000 copies took {took:.2f} s"
    copies = json.dumps([pid] * 400_000)
    assert len(copies) > settings.default("max_request_size")
    err = refusal(device.Summarise, copies)
    assert err.reason == "OET_InvalidRequest" and "MaxRequestSize" in err.desc
    unknown = json.dumps([pid, *(10**4000 + i for i in range(200))])  # 800 kB of unknown IDs
    err = refusal(device.Summarise, unknown)
    assert err.reason == "OET_UnknownProcedure" and "and 190 more" in err.desc
    assert len(err.desc) < 1000
    too_many = json.dumps(list(range(1, settings.default("max_summarise_ids") + 2)))
    err = refusal(device.Summarise, too_many)
    assert err.reason == "OET_InvalidRequest" and "MaxSummariseIds" in err.desc
    events.close()


# -- strict JSON ---------------------------------------------------------------------------------

HOSTILE_JSON = {
    "nested 1000 deep": "[" * 1000 + "]" * 1000,
    "nested 100000 deep": "[" * 100_000,
    "nested 65 deep in args": '{"id": 1, "run_args": {"args": ' + "[" * 65 + "]" * 65 + "}}",
    "an integer of 5000 digits": '{"id": ' + "9" * 5000 + "}",
    "an integer of 5000 digits in args": '{"id": 1, "run_args": {"args": [' + "1" * 5000 + "]}}",
    "NaN": '{"id": 1, "run_args": {"args": [NaN]}}',
    "Infinity": '{"id": 1, "run_args": {"kwargs": {"x": Infinity}}}',
    "-Infinity": '{"id": 1, "run_args": {"args": [-Infinity]}}',
    "a float that overflows": '{"id": 1, "run_args": {"args": [1e999]}}',
    "a bare NaN": "NaN",
    "truncated": '{"id": 1, "run_args": {"args": [1, 2',
    "not JSON": "\x01\xff\xfe",
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_every_parse_failure_is_an_invalid_request(device, case):
    text = HOSTILE_JSON[case]
    for command in ("Prepare", "Start", "Stop", "Summarise"):
        err = refusal(getattr(device, command), text)
        assert err.reason == "OET_InvalidRequest", (command, err.reason, err.desc)
        assert len(err.desc) < 2000
    assert device.state() == tango.DevState.ON


def test_non_finite_numbers_in_init_args_are_refused_with_the_reason(device):
    for word in ("NaN", "Infinity", "-Infinity"):
        text = prepare_request("hello.py").replace('"args": []', f'"args": [{word}]')
        err = refusal(device.Prepare, text)
        assert err.reason == "OET_InvalidRequest"
        assert f"{word} is not a JSON number" in err.desc, err.desc
    assert strict(device.Summarise("")) == []


class StreamReader:
    """Reads the REST event stream in a thread; every ``data:`` line parsed strictly."""

    def __init__(self, base: str) -> None:
        self.events: list[Any] = []
        self.bad: list[str] = []
        self._cond = threading.Condition()
        self._http = httpx.Client(base_url=base, timeout=TIMEOUT)
        self._stop = False
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._http.stream("GET", "/stream") as answer:
            for line in answer.iter_lines():
                if self._stop:
                    return
                self.connected.set()  # the stream's first line is a comment saying so
                if line.startswith("data:"):
                    with self._cond:
                        try:
                            self.events.append(strict(line[5:]))
                        except ValueError as exc:
                            self.bad.append(f"{exc}: {line[:200]}")
                        self._cond.notify_all()

    def wait_for(self, predicate: Any) -> Any:
        with self._cond:
            found: list[Any] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if predicate(e)]
                return bool(found)

            assert self._cond.wait_for(seen, TIMEOUT), self.events[-5:]
            return found[0]

    def close(self) -> None:
        self._stop = True
        self._http.close()


def test_what_a_script_returns_or_publishes_is_emitted_as_standard_json(tmp_path, root):
    (root / "nonfinite.py").write_text(
        "from pubsub import pub\n\n\n"
        "def main():\n"
        "    pub.sendMessage('user.values', msg_src='nonfinite', x=float('nan'),\n"
        "                    y=[float('inf'), -float('inf')], z={'n': 10 ** 100})\n"
        "    return {'nan': float('nan'), 'inf': float('inf')}\n"
    )
    port = free_port()
    with start_device(tmp_path, root, RestPort=port, RestHost="127.0.0.1") as device:
        watcher = StrictEvents(device)
        events = SummaryEvents(device)
        base = f"http://127.0.0.1:{port}/oet/api/v7"
        stream = StreamReader(base)
        assert stream.connected.wait(TIMEOUT)
        request = {
            "script": {"script_type": "filesystem", "script_uri": f"file://{root}/nonfinite.py"}
        }
        pid = strict(device.Prepare(json.dumps(request)))["id"]
        events.wait_for(pid, {"READY"})
        strict(device.Start(json.dumps({"id": pid})))
        final = events.wait_for(pid, FINAL)
        assert final["state"] == "COMPLETE", final["history"]["stacktrace"]
        for text in (
            device.procedureSummaries,
            device.Summarise(""),
            device.Summarise(f"[{pid}]"),
        ):
            strict(text)
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            strict(http.get("/procedures").text)
            strict(http.get(f"/procedures/{pid}").text)
        # the message's non-finite numbers arrive as null, on the stream and the attribute
        message = stream.wait_for(lambda e: e.get("topic") == "user.values")
        assert message["data"]["x"] is None and message["data"]["y"] == [None, None], message
        stream.wait_for(lambda e: e.get("new_state") == "COMPLETE")
        watcher.close()
        events.close()
        stream.close()
        assert watcher.count > 0 and watcher.bad == [] and stream.bad == []


def test_the_rest_api_refuses_the_same_hostile_bodies_and_emits_standard_json(tmp_path, root):
    port = free_port()
    with start_device(tmp_path, root, RestPort=port, RestHost="127.0.0.1") as device:
        base = f"http://127.0.0.1:{port}/oet/api/v7"
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            uri = f"file://{SCRIPTS / 'hello.py'}"

            def post(args: str, script_uri: str = json.dumps(uri)) -> httpx.Response:
                body = (
                    '{"script": {"script_type": "filesystem", "script_uri": ' + script_uri + "}, "
                    '"script_args": {"init": {"args": ' + args + ', "kwargs": {}}}}'
                )
                return http.post(
                    "/procedures", content=body, headers={"content-type": "application/json"}
                )

            for args in ("[NaN]", "[Infinity]", "[-Infinity]", "[1e999]", "[" * 65 + "]" * 65):
                answer = post(args)
                assert answer.status_code == 422, (args[:20], answer.text)
                assert "Invalid request" in strict(answer.text)["detail"]
            for args in ("[" * 100_000, "[" + "1" * 5000 + "]"):  # the JSON parser's refusals
                answer = post(args)
                assert answer.status_code in (400, 422), answer.text
            answer = post("[]", script_uri='"file:///x\\ud800.py"')  # a lone surrogate
            assert answer.status_code == 422, answer.text
            answer = post(json.dumps(["x" * settings.default("max_argument_size")]))
            assert answer.status_code == 413 and "MaxArgumentSize" in answer.text
            assert strict(http.get("/procedures").text) == []
            assert device.state() == tango.DevState.ON
            answer = post("[]")
            assert answer.status_code == 201, answer.text
            strict(http.get("/procedures").text)


# -- the script that runs is the file that was checked ----------------------------------------


def _workers_and_fork_server() -> list[psutil.Process]:
    """The fork server this (forked) test's device started, and the workers it forked."""
    me = psutil.Process()
    servers = [
        c for c in me.children() if "ska_oso_oet.procedure.launcher" in " ".join(c.cmdline())
    ]
    assert len(servers) == 1, servers
    return [servers[0], *servers[0].children()]


def _wait_until(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _stopped(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return True


def _freeze_worker_processes() -> list[psutil.Process]:
    """SIGSTOP the fork server and every spare worker (each started by this test's device), so
    that the worker given the next Prepare cannot open the script before we let it: the race
    window between the server's check and the worker's open, held wide open."""
    _wait_until(lambda: len(_workers_and_fork_server()) >= 3)  # the server and 2 spares
    frozen = _workers_and_fork_server()
    for p in frozen:
        p.send_signal(signal.SIGSTOP)
    _wait_until(lambda: all(_stopped(p) for p in frozen))
    return frozen


def _thaw(frozen: list[psutil.Process]) -> None:
    for p in reversed(frozen):
        try:
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass


def _write_script(path, marker) -> None:
    path.write_text(f"open({str(marker)!r}, 'w').close()\n\n\ndef main():\n    pass\n")


def _swap_file(root, outside) -> str:
    """root/job.py is checked; then it becomes a symlink to outside/job.py."""
    os.unlink(root / "job.py")
    os.symlink(outside / "job.py", root / "job.py")
    return f"file://{root}/job.py"


def _swap_directory(root, outside) -> str:
    """root/sub/job.py is checked; then root/sub becomes a symlink to outside."""
    os.rename(root / "sub", root / "sub.old")
    os.symlink(outside, root / "sub")
    return f"file://{root}/sub/job.py"


def _swap_fifo(root, outside) -> str:
    """root/job.py is checked; then a FIFO takes its place (opening it must not hang)."""
    os.unlink(root / "job.py")
    os.mkfifo(root / "job.py")
    return f"file://{root}/job.py"


@pytest.mark.parametrize("swap", [_swap_file, _swap_directory, _swap_fifo])
def test_a_script_swapped_after_the_check_is_not_run(device, root, tmp_path, swap):
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    checked, escaped = tmp_path / "checked-ran", tmp_path / "outside-ran"
    _write_script(root / "job.py", checked)
    _write_script(root / "sub" / "job.py", checked)
    _write_script(outside / "job.py", escaped)
    uri = {_swap_directory: f"file://{root}/sub/job.py"}.get(swap, f"file://{root}/job.py")
    events = SummaryEvents(device)
    frozen = _freeze_worker_processes()
    try:
        request = {"script": {"script_type": "filesystem", "script_uri": uri}}
        pid = strict(device.Prepare(json.dumps(request)))["id"]  # checked: inside the roots
        assert swap(root, outside) == uri
    finally:
        _thaw(frozen)
    final = events.wait_for(pid, FINAL)
    assert final["state"] == "FAILED"
    stacktrace = final["history"]["stacktrace"]
    assert "changed after it was checked" in stacktrace and "was not run" in stacktrace
    assert not escaped.exists() and not checked.exists()
    # a file that is not swapped still runs, from where it was checked
    (root / "again.py").write_text("def main():\n    return 'ran'\n")
    pid = strict(
        device.Prepare(
            json.dumps(
                {"script": {"script_type": "filesystem", "script_uri": f"file://{root}/again.py"}}
            )
        )
    )["id"]
    assert events.wait_for(pid, {"READY", *FINAL})["state"] == "READY"
    events.close()


# -- a forged message from a script --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickle", "garbage", "hijack"])
def test_a_message_a_script_forges_fails_only_its_procedure(tmp_path, root, kind):
    with start_device(tmp_path, root, MaxRunning=2) as device:
        events = SummaryEvents(device)
        marker = tmp_path / "planted"
        bystander = ready(device, events, "sleeper.py")
        forger = ready(device, events, "forger.py")
        device.Start(json.dumps({"id": bystander, "run_args": {"kwargs": {"seconds": 1}}}))
        target = str(bystander) if kind == "hijack" else str(marker)  # hijack: stop it
        device.Start(json.dumps({"id": forger, "run_args": {"args": [kind, target]}}))
        ended = events.wait_for(forger, FINAL)
        assert ended["state"] == "FAILED"
        assert "sent an invalid message" in ended["history"]["stacktrace"]
        assert not marker.exists()  # the server never ran the script's code
        assert events.wait_for(bystander, FINAL)["state"] == "COMPLETE"
        events.close()
        assert_serving(device)


# -- fuzz ----------------------------------------------------------------------------------------

SEED = 20261202
REQUESTS = 3000
FUZZ_SECONDS = 240
REST_REQUESTS = 600


class Fuzzer:
    """Generated requests: valid ones, mutated at random (a node replaced, a key dropped or
    added, the text cut, a character put in, a number made hostile), and plain garbage."""

    def __init__(self, rng: random.Random, ids: list[int], root: Any) -> None:
        self.rng = rng
        self.ids = ids
        self.root = root

    def pid(self) -> Any:
        return self.rng.choice([*self.ids, 0, -1, 999, 2**31, 2**63, 10**30])

    def template(self, command: str) -> Any:
        r = self.rng
        if command == "Prepare":
            uri = r.choice(
                [
                    f"file://{self.root}/missing.py",
                    f"file://{SCRIPTS}/../../x.py",
                    "file:///etc/passwd",
                    "file:///dev/zero",
                    "git://x.py",
                ]
            )
            if r.random() < 0.05:  # now and then a script that loads: procedures come and go
                uri = f"file://{SCRIPTS}/hello.py"
            script: dict[str, Any] = {"script_type": "filesystem", "script_uri": uri}
            if uri.startswith("git"):
                script = {
                    "script_type": "git",
                    "script_uri": uri,
                    "git_args": {"git_repo": "file:///tmp/x", "git_branch": "--upload-pack=x"},
                }
            return {"script": script, "script_args": {"init": {"args": [], "kwargs": {}}}}
        if command == "Start":
            return {
                "id": self.pid(),
                "fn_name": r.choice(["main", "nope", "_x", "__import__"]),
                "run_args": {"args": [], "kwargs": {}},
                "force_start": r.random() < 0.2,
            }
        if command == "Stop":
            return {"id": self.pid(), "run_abort": r.random() < 0.3}
        if command == "Summarise":
            return [self.pid() for _ in range(r.randint(0, 5))]
        if command == "ListScripts":
            return ""
        if command == "GetOutput":
            return {"id": self.pid(), "since": r.choice([0, -1, 10**20])}
        return {"id": self.pid()}

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(12 if depth < 4 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 2**31, -(2**63), 10**40, r.randint(-1000, 1000)])
        if kind == 3:
            return r.choice([0.5, -0.0, 1e308, 5e-324, r.random()])
        if kind in (4, 5, 6, 7):
            return r.choice(
                [
                    "",
                    "main",
                    "../../etc/passwd",
                    "file:///etc/passwd",
                    "\x00",
                    "--upload-pack=touch /tmp/x",
                    "x" * r.randint(0, 3000),
                    "é\xff",
                    "${HOME}",
                    "`id`",
                    "$(id)",
                    "%s%n",
                    "\ud800",
                ]
            )
        if kind in (8, 9):
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {
            r.choice(["id", "args", "kwargs", "script", "x", ""]): self.value(depth + 1)
            for _ in range(r.randint(0, 4))
        }

    def mutate(self, doc: Any) -> Any:
        """Replace, drop or add one node somewhere in ``doc``."""
        r = self.rng
        if not isinstance(doc, dict | list) or not doc or r.random() < 0.2:
            return self.value()
        key = r.choice(list(doc)) if isinstance(doc, dict) else r.randrange(len(doc))
        action = r.randrange(4)
        if action == 0 and isinstance(doc, dict):
            del doc[key]
        elif action == 1 and isinstance(doc, dict):
            doc[r.choice(["extra", "id", "fn_name", "script_type", "kwargs"])] = self.value()
        elif action == 2:
            doc[key] = self.mutate(doc[key])
        else:
            doc[key] = self.value()
        return doc

    def text(self, command: str) -> str:
        r = self.rng
        roll = r.random()
        if roll < 0.05:
            chars = "".join(chr(r.randrange(1, 256)) for _ in range(r.randint(0, 200)))
            return r.choice([chars, "", " ", "null", "[]", "{}", '""', "0", "true", "NaN"])
        doc = self.template(command)
        for _ in range(0 if roll < 0.3 else r.randint(1, 3)):
            doc = self.mutate(doc)
        text = json.dumps(doc)
        roll = r.random()
        if roll < 0.1 and text:
            return text[: r.randrange(len(text))]  # cut anywhere
        if roll < 0.2 and text:
            at = r.randrange(len(text))
            return (
                text[:at]
                + r.choice(
                    [
                        "NaN",
                        "Infinity",
                        "-Infinity",
                        "1e999",
                        "9" * 4400,
                        "[" * 70,
                        "\\ud800",
                        "\x01",
                        '"',
                        "}",
                        ",,",
                    ]
                )
                + text[at:]
            )
        if roll < 0.25:
            return "[" * r.choice([100, 1000, 10_000]) + text
        if roll < 0.27:
            return json.dumps({"pad": "x" * (settings.default("max_request_size") + 1)})
        return text


def test_a_fuzz_of_generated_requests_gets_only_documented_answers(device, root):
    events = SummaryEvents(device)
    watcher = StrictEvents(device)
    ids = [ready(device, events), ready(device, events, "sleeper.py")]
    commands = [
        c.cmd_name
        for c in device.command_list_query()
        if c.in_type == tango.CmdArgType.DevString and c.out_type == tango.CmdArgType.DevString
    ]
    assert {"Prepare", "Start", "Stop", "Summarise"} <= set(commands)
    fuzz = Fuzzer(random.Random(SEED), ids, root)
    answers: dict[str, int] = {}
    deadline = time.monotonic() + FUZZ_SECONDS
    sent = 0
    for sent in range(1, REQUESTS + 1):
        assert time.monotonic() < deadline, f"only {sent} requests in {FUZZ_SECONDS} s"
        command = fuzz.rng.choice(commands)
        text = fuzz.text(command)
        try:
            reply = device.command_inout(command, text)
        except tango.DevFailed as exc:
            err = exc.args[0]
            assert err.reason in DOCUMENTED, (command, text[:300], err.reason, err.desc)
            answers[err.reason] = answers.get(err.reason, 0) + 1
        else:
            strict(reply)
            answers["result"] = answers.get("result", 0) + 1
    assert sent == REQUESTS
    assert answers.get("result", 0) > 0 and answers.get("OET_InvalidRequest", 0) > REQUESTS / 3
    # every procedure ends; the device is ON, answering, its JSON standard
    for summary in strict(device.Summarise("")):
        if summary["state"] not in FINAL:
            device.Stop(json.dumps({"id": summary["id"]}))
    for summary in strict(device.Summarise("")):
        events.wait_for(summary["id"], FINAL)
    strict(device.procedureSummaries)
    assert_serving(device)
    watcher.close()
    events.close()
    assert watcher.bad == []


def test_a_fuzz_of_generated_rest_bodies_gets_only_documented_answers(tmp_path, root):
    port = free_port()
    with start_device(tmp_path, root, RestPort=port, RestHost="127.0.0.1") as device:
        events = SummaryEvents(device)
        ids = [ready(device, events), ready(device, events, "sleeper.py")]
        fuzz = Fuzzer(random.Random(SEED + 1), ids, root)
        documented = {200, 201, 400, 403, 404, 409, 413, 422}
        base = f"http://127.0.0.1:{port}/oet/api/v7"
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            for _ in range(REST_REQUESTS):
                if fuzz.rng.random() < 0.5:
                    method, path, body = "POST", "/procedures", fuzz.text("Prepare")
                else:
                    put = {
                        "state": fuzz.rng.choice(["RUNNING", "STOPPED", "PAUSED", None]),
                        "script_args": {"main": {"args": [], "kwargs": {}}},
                        "abort": False,
                    }
                    body = json.dumps(fuzz.mutate(put)) if fuzz.rng.random() < 0.7 else "{"
                    method, path = "PUT", f"/procedures/{fuzz.pid()}"
                answer = http.request(
                    method,
                    path,
                    content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json"},
                )
                assert answer.status_code in documented, (method, body[:300], answer.text[:300])
                strict(answer.text)
            strict(http.get("/procedures").text)
        for summary in strict(device.Summarise("")):
            if summary["state"] not in FINAL:
                device.Stop(json.dumps({"id": summary["id"]}))
        assert_serving(device)
        events.close()


def test_the_strict_parser_and_writer_on_their_own():
    from ska_oso_oet.procedure import strictjson

    for text in (
        "[NaN]",
        "[Infinity]",
        "[-Infinity]",
        "[1e400]",
        "[" + "7" * 5000 + "]",
        "[" * 65 + "]" * 65,
        "[" * 5000,
        b"\xff",
        "{",
        "",
    ):
        with pytest.raises(strictjson.JSONInputError):
            strictjson.loads(text)
    assert strictjson.loads("[" * 64 + "]" * 64) is not None
    assert strictjson.loads('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    value = {
        "nan": math.nan,
        "inf": [math.inf, -math.inf],
        "big": 10**5000,
        "cycle": cycle,
        "deep": deep,
        "obj": object(),
    }
    out = strict(strictjson.dumps(value, default=repr))
    assert out["nan"] is None and out["inf"] == [None, None]
    assert out["big"] == "<integer of about 5001 digits>"
    assert out["cycle"] == ["<reference cycle>"]
    assert out["obj"].startswith("<object object")
    assert strict(strictjson.dumps({math.inf: 1, (1, 2): 2}, default=repr)) == {
        "inf": 1,
        "(1, 2)": 2,
    }
    assert strictjson.dumps([1.5, "a"]) == json.dumps([1.5, "a"])
