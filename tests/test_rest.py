"""The REST API beside the Tango device: a real device server (DeviceTestContext, forked), a
real HTTP client (httpx) on 127.0.0.1, and the same procedures seen from both sides.

The stream's own behaviour (clients that disconnect or read too slowly) is tested against the
REST server run in-process over a real ScriptExecutionService, where its clients can be
counted. Tests wait on stream events or Tango events, never on fixed sleeps.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet.procedure import ui
from ska_oso_oet.procedure.states import ProcedureState
from ska_oso_oet.procedure.ui import rest, server
from ska_oso_oet.procedure.ui.models import StopResultModel, SummaryModel
from ska_oso_oet.tango.device import ObservationExecutionTool
from ska_oso_oet.tango.ska import AdminMode
from tests.helpers import SCRIPTS, SummaryEvents, device_properties, free_port

TIMEOUT = 20.0
PREFIX = "/oet/api/v7"
FINAL = {"COMPLETE", "STOPPED", "FAILED"}
RESTING = FINAL | {"READY"}
WITH_INIT = [
    "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY", "RUNNING", "READY",
    "COMPLETE",
]  # fmt: skip


def script(name: str) -> dict[str, str]:
    return {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS / name}"}


def post_body(name: str, **init_kwargs: Any) -> dict[str, Any]:
    return {"script": script(name), "script_args": {"init": {"args": [], "kwargs": init_kwargs}}}


def run_body(**kwargs: Any) -> dict[str, Any]:
    return {"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": kwargs}}}


class Stream:
    """An SSE client over httpx: reads the stream in the calling thread, event by event."""

    def __init__(self, client: httpx.Client) -> None:
        self._context = client.stream("GET", "/stream", timeout=httpx.Timeout(10.0, read=TIMEOUT))
        self.response = self._context.__enter__()
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines()
        self.events: list[dict[str, Any]] = []
        self._claimed: set[int] = set()
        # the first block is a comment: from then on this client is subscribed
        assert self._block() == [": connected to the OET event stream"]

    def _block(self) -> list[str] | None:
        lines: list[str] = []
        for line in self._lines:
            if line == "":
                if lines:
                    return lines
                continue
            lines.append(line)
        return lines or None

    def next(self, deadline: float | None = None) -> dict[str, Any] | None:
        """The next event (comments skipped), or None when the server ended the stream.
        Keep-alive comments do not make a reader wait past ``deadline``."""
        while True:
            assert deadline is None or time.monotonic() < deadline, "no event before the deadline"
            block = self._block()
            if block is None:
                return None
            data = [line[len("data: ") :] for line in block if line.startswith("data: ")]
            if data:
                event: dict[str, Any] = json.loads("\n".join(data))
                self.events.append(event)
                return event

    def until(self, pid: int, states: set[str]) -> dict[str, Any]:
        """The summary of the first event, not yet claimed, in which ``pid`` reaches one of
        ``states``; reads on until there is one. An event read while waiting for another
        procedure is not lost: it is still there for this one."""

        def matches(index: int) -> bool:
            event = self.events[index]
            return (
                index not in self._claimed
                and event.get("msg_src") == pid
                and event.get("new_state") in states
            )

        deadline = time.monotonic() + TIMEOUT
        index = next((i for i in range(len(self.events)) if matches(i)), None)
        while index is None:
            assert time.monotonic() < deadline, f"{pid} never reached {states}: {self.states(pid)}"
            event = self.next(deadline)
            assert event is not None, f"the stream ended before {pid} reached {states}"
            if matches(len(self.events) - 1):
                index = len(self.events) - 1
        self._claimed.add(index)
        return self.events[index]["result"]  # type: ignore[no-any-return]

    def states(self, pid: int) -> list[str]:
        return [
            e["new_state"]
            for e in self.events
            if e["topic"] == rest.STATECHANGE_TOPIC and e["msg_src"] == pid
        ]

    def close(self) -> None:
        self._context.__exit__(None, None, None)


# -- a real device server with its REST API ----------------------------------------------------


class Oet:
    def __init__(self, proxy: tango.DeviceProxy, port: int) -> None:
        self.proxy = proxy
        self.port = port
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}{PREFIX}", timeout=TIMEOUT)
        self.streams: list[Stream] = []

    def stream(self) -> Stream:
        self.streams.append(Stream(self.http))
        return self.streams[-1]

    def tango_summary(self, pid: int) -> dict[str, Any]:
        (summary,) = json.loads(self.proxy.Summarise(json.dumps([pid])))
        return summary  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Stop what still runs, and wait until the device's Tango events have caught up
        with its procedures. REST sees a change as soon as the service makes it, the Tango
        event pusher a little later; an Init or a server shutdown that came before the pusher
        had finished would keep it waiting on the device for the monitor's timeout."""
        for s in ok(self.http.get("/procedures")):
            if s["state"] not in RESTING:
                self.http.put(f"/procedures/{s['id']}", json={"state": "STOPPED"})
        events = SummaryEvents(self.proxy)
        try:

            def caught_up(received: list[list[dict[str, Any]]]) -> bool:
                if not received or not all(s["state"] in RESTING for s in received[-1]):
                    return False
                return received[-1] == json.loads(self.proxy.Summarise(""))

            events.wait_until(caught_up)
        finally:
            events.close()

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.http.close()


def rest_properties(tmp_path: Any, port: int, **more: Any) -> dict[str, Any]:
    return device_properties(
        tmp_path,
        RestPort=port,
        RestHost="127.0.0.1",
        MaxArgumentSize=2 * rest.MAX_BODY,  # the body limit is what these tests try
        **more,
    )


@pytest.fixture
def oet(tmp_path: Any) -> Iterator[Oet]:
    port = free_port()
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties=rest_properties(tmp_path, port),
    ) as proxy:
        client = Oet(proxy, port)
        try:
            yield client
            client.settle()
        finally:
            client.close()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, status: int, words: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    return detail


@pytest.mark.forked
@pytest.mark.tango
def test_create_start_list_and_get_over_rest(oet: Oet) -> None:
    stream = oet.stream()
    created = ok(oet.http.post("/procedures", json=post_body("with_init.py", subarray_id=1)), 201)
    SummaryModel.model_validate_json(json.dumps(created))
    assert created["state"] == "CREATING" and created["script"] == script("with_init.py")
    pid = created["id"]
    stream.until(pid, {"READY"})
    started = ok(oet.http.put(f"/procedures/{pid}", json=run_body(x=1)))
    assert started["script_args"]["main"] == {"args": [], "kwargs": {"x": 1}}
    final = stream.until(pid, FINAL)
    assert final["state"] == "COMPLETE"
    assert [s for s, _ in final["history"]["process_states"]] == WITH_INIT
    # the list, the one, and Tango's Summarise are the same JSON
    listed = ok(oet.http.get("/procedures"))
    assert [s["id"] for s in listed] == [pid]
    got = ok(oet.http.get(f"/procedures/{pid}"))
    assert listed[0] == got == oet.tango_summary(pid) == final
    SummaryModel.model_validate_json(json.dumps(got))
    # a PUT without a state changes nothing and returns the summary
    assert ok(oet.http.put(f"/procedures/{pid}", json={})) == got
    # the reference's trailing-slash form of the collection works too
    assert ok(oet.http.get("/procedures/")) == listed


@pytest.mark.forked
@pytest.mark.tango
def test_stop_with_abort_over_rest(oet: Oet) -> None:
    stream = oet.stream()
    pid = ok(oet.http.post("/procedures", json=post_body("sleeper.py", subarray_id=3)), 201)["id"]
    stream.until(pid, {"READY"})
    ok(oet.http.put(f"/procedures/{pid}", json=run_body()))
    stream.until(pid, {"RUNNING"})
    stopped = ok(oet.http.put(f"/procedures/{pid}", json={"state": "STOPPED", "abort": True}))
    StopResultModel.model_validate_json(json.dumps(stopped))
    (abort,) = stopped["abort_procedures"]
    assert f"Stopping procedure {pid}" in stopped["abort_message"]
    assert str(abort["id"]) in stopped["abort_message"]
    assert abort["script_args"]["init"]["kwargs"] == {"subarray_id": 3}
    assert stream.until(pid, FINAL)["state"] == "STOPPED"
    assert stream.until(abort["id"], FINAL)["state"] == "COMPLETE"
    # stopping without the abort returns no abort procedure; an ended one is refused
    again = ok(oet.http.post("/procedures", json=post_body("sleeper.py")), 201)["id"]
    stream.until(again, {"READY"})
    plain = ok(oet.http.put(f"/procedures/{again}", json={"state": "STOPPED"}))
    assert plain["abort_procedures"] == []
    assert stream.until(again, FINAL)["state"] == "STOPPED"
    refused(oet.http.put(f"/procedures/{again}", json={"state": "STOPPED"}), 409, "ended")


@pytest.mark.forked
@pytest.mark.tango
def test_unknown_ids_and_malformed_bodies(oet: Oet) -> None:
    refused(oet.http.get("/procedures/99"), 404, "No procedure with ID 99")
    refused(oet.http.put("/procedures/99", json=run_body()), 404, "No procedure with ID 99")
    refused(oet.http.put("/procedures/99", json={"state": "STOPPED"}), 404, "99")
    refused(oet.http.get("/procedures/one"), 422, "procedure_id")
    post = [
        (b"not json", "not valid JSON"),
        (b"{}", "script is required"),
        (b'{"script": {"script_type": "ftp", "script_uri": "file:///x.py"}}', "script"),
        (json.dumps({"script": script("hello.py"), "extra": 1}).encode(), "extra is not a known"),
        (
            json.dumps({"script": script("hello.py"), "script_args": {"init": {"args": 1}}}),
            "script_args.init.args",
        ),
        (b'{"script": {"script_type": "filesystem", "script_uri": "/x.py"}}', "file://"),
        (b"[]", "Invalid request"),
    ]
    for body, words in post:
        detail = refused(
            oet.http.post(
                "/procedures", content=body, headers={"content-type": "application/json"}
            ),
            422,
            words,
        )
        if "file://" not in words:
            assert "expected e.g." in detail
    # a body sent without saying it is JSON: the detail says how to send it
    refused(
        oet.http.post("/procedures", data={"script": "x"}), 422, "Content-Type: application/json"
    )
    pid = ok(oet.http.post("/procedures", json=post_body("hello.py")), 201)["id"]
    for body in ({"state": "ABORTED"}, {"state": "RUNNING", "script_args": {"init": {}}},
                 {"state": "STOPPED", "abort": "yes"}, {"id": pid}):  # fmt: skip
        refused(oet.http.put(f"/procedures/{pid}", json=body), 422, "Invalid request")
    # nothing above reached the service: the only procedure is the one prepared
    assert [s["id"] for s in ok(oet.http.get("/procedures"))] == [pid]
    assert oet.proxy.state() == tango.DevState.ON


@pytest.mark.forked
@pytest.mark.tango
def test_refusals_say_what_to_do(oet: Oet, tmp_path: Any) -> None:
    stream = oet.stream()
    refused(
        oet.http.post(
            "/procedures", json={"script": {**script("x"), "script_uri": "file:///etc/passwd"}}
        ),
        403,
        "outside the allowed script directories",
    )
    git = {"script_type": "git", "script_uri": "git://x.py",
           "git_args": {"git_repo": "https://example.org/x.git"}}  # fmt: skip
    refused(oet.http.post("/procedures", json={"script": git}), 403, "AllowedGitRepositories")
    refused(oet.http.post("/procedures", json=post_body("missing.py")), 403, "not found")
    # not READY: still in its init
    slow = ok(oet.http.post("/procedures", json=post_body("slow_init.py", seconds=600)), 201)["id"]
    stream.until(slow, {"INITIALISING"})
    refused(oet.http.put(f"/procedures/{slow}", json=run_body()), 409, "not READY")
    # another is running (MaxRunning is 1)
    first = ok(oet.http.post("/procedures", json=post_body("sleeper.py")), 201)["id"]
    second = ok(oet.http.post("/procedures", json=post_body("sleeper.py")), 201)["id"]
    stream.until(first, {"READY"})
    stream.until(second, {"READY"})
    ok(oet.http.put(f"/procedures/{first}", json=run_body()))
    refused(oet.http.put(f"/procedures/{first}", json=run_body()), 409, "already running")
    refused(oet.http.put(f"/procedures/{second}", json=run_body()), 409, "at most 1 may run")
    # the device disabled by adminMode: no prepare, no start; stopping stays possible
    oet.proxy.adminMode = AdminMode.OFFLINE
    refused(oet.http.post("/procedures", json=post_body("hello.py")), 409, "adminMode OFFLINE")
    refused(oet.http.put(f"/procedures/{second}", json=run_body()), 409, "set adminMode")
    for pid in (slow, first, second):
        ok(oet.http.put(f"/procedures/{pid}", json={"state": "STOPPED"}))
        assert stream.until(pid, FINAL)["state"] == "STOPPED"
    oet.proxy.adminMode = AdminMode.ONLINE
    assert ok(oet.http.post("/procedures", json=post_body("hello.py")), 201)["state"] == "CREATING"
    assert oet.proxy.state() == tango.DevState.ON


@pytest.mark.forked
@pytest.mark.tango
def test_a_body_over_the_limit_is_refused(oet: Oet) -> None:
    big = json.dumps(post_body("hello.py", blob="x" * rest.MAX_BODY)).encode()
    refused(
        oet.http.post("/procedures", content=big, headers={"content-type": "application/json"}),
        413,
        "larger than",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    refused(
        oet.http.post(
            "/procedures", content=chunks(), headers={"content-type": "application/json"}
        ),
        413,
        "larger than",
    )
    # just under the limit is accepted
    fits = post_body("hello.py", blob="x" * (rest.MAX_BODY - 1000))
    assert ok(oet.http.post("/procedures", json=fits), 201)["state"] == "CREATING"
    assert len(ok(oet.http.get("/procedures"))) == 1


@pytest.mark.forked
@pytest.mark.tango
def test_the_stream_carries_a_whole_lifecycle_in_order(oet: Oet) -> None:
    stream = oet.stream()
    other = oet.stream()
    pid = ok(oet.http.post("/procedures", json=post_body("with_init.py")), 201)["id"]
    stream.until(pid, {"READY"})
    ok(oet.http.put(f"/procedures/{pid}", json=run_body()))
    stream.until(pid, FINAL)
    other.until(pid, FINAL)
    for s in (stream, other):
        assert s.states(pid) == WITH_INIT
        for event in s.events:
            if event["topic"] != rest.STATECHANGE_TOPIC:  # the script's output and messages
                assert event["id"] == pid and ("lines" in event or "data" in event)
                continue
            assert event["result"]["state"] == event["new_state"]
            SummaryModel.model_validate_json(json.dumps(event["result"]))
    # each event's history is the one before it plus one state
    histories = [
        e["result"]["history"]["process_states"]
        for e in stream.events
        if e["topic"] == rest.STATECHANGE_TOPIC
    ]
    for before, after in itertools.pairwise(histories):
        assert after[:-1] == before
    # a failure: its state change, then its stacktrace
    failing = ok(oet.http.post("/procedures", json=post_body("failing.py")), 201)["id"]
    stream.until(failing, {"READY"})
    ok(oet.http.put(f"/procedures/{failing}", json=run_body()))
    assert stream.until(failing, FINAL)["state"] == "FAILED"
    trace = stream.next()
    assert trace is not None and trace["topic"] == rest.STACKTRACE_TOPIC
    assert trace["msg_src"] == failing and "the telescope is on fire" in trace["stacktrace"]


@pytest.mark.forked
@pytest.mark.tango
def test_rest_and_tango_drive_the_same_procedures(oet: Oet) -> None:
    events = SummaryEvents(oet.proxy)
    stream = oet.stream()
    # prepared over REST, started over Tango
    pid = ok(oet.http.post("/procedures", json=post_body("with_init.py", subarray_id=2)), 201)[
        "id"
    ]
    events.wait_for(pid, {"READY"})
    request = {"id": pid, "fn_name": "main", "run_args": {"args": [], "kwargs": {"y": 2}}}
    oet.proxy.Start(json.dumps(request))
    assert stream.until(pid, FINAL)["state"] == "COMPLETE"
    got = ok(oet.http.get(f"/procedures/{pid}"))
    assert got["script_args"]["main"]["kwargs"] == {"y": 2}
    assert got == oet.tango_summary(pid)
    # prepared over Tango, started over REST
    prepare = {"script": script("hello.py"), "script_args": {"init": {"args": [], "kwargs": {}}}}
    other = json.loads(oet.proxy.Prepare(json.dumps(prepare)))["id"]
    stream.until(other, {"READY"})
    ok(oet.http.put(f"/procedures/{other}", json=run_body(name="rest")))
    assert events.wait_for(other, FINAL)["state"] == "COMPLETE"
    assert ok(oet.http.get(f"/procedures/{other}")) == oet.tango_summary(other)
    listed = ok(oet.http.get("/procedures"))
    events.wait_until(lambda received: received[-1] == listed)
    assert json.loads(oet.proxy.procedureSummaries) == listed


@pytest.mark.forked
@pytest.mark.tango
def test_init_stops_and_restarts_rest(oet: Oet) -> None:
    stream = oet.stream()
    pid = ok(oet.http.post("/procedures", json=post_body("sleeper.py")), 201)["id"]
    stream.until(pid, {"READY"})
    oet.settle()  # Tango's events have caught up: Init finds the event pusher idle
    oet.proxy.Init()
    # Init stopped the REST server before the service: the stream ended
    while stream.next() is not None:
        pass
    assert stream.states(pid)[-1] == "READY"
    # REST serves again, over the device's new service: the history kept, IDs going on
    assert [(s["id"], s["state"]) for s in ok(oet.http.get("/procedures"))] == [(pid, "STOPPED")]
    after = ok(oet.http.post("/procedures", json=post_body("hello.py")), 201)
    assert after["id"] == pid + 1
    assert oet.tango_summary(after["id"])["id"] == after["id"]
    oet.stream()  # and a new stream connects


@pytest.mark.forked
@pytest.mark.tango
def test_a_busy_port_does_not_stop_the_device(tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with DeviceTestContext(
            ObservationExecutionTool,
            device_name="oet/executor/1",
            properties=rest_properties(tmp_path, port),
        ) as proxy:
            assert proxy.state() == tango.DevState.ON
            events = SummaryEvents(proxy)
            prepare = {"script": script("hello.py")}
            pid = json.loads(proxy.Prepare(json.dumps(prepare)))["id"]
            events.wait_for(pid, {"READY"})
            assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
            assert "another program uses the port" in caplog.text
            assert "serves on without it" in caplog.text


@pytest.mark.forked
@pytest.mark.tango
def test_rest_is_off_by_default(tmp_path: Any, caplog: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv(server.PORT_ENV, raising=False)
    caplog.set_level(logging.INFO)
    props = rest_properties(tmp_path, 0)
    del props["RestPort"], props["RestHost"]
    with DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=props
    ) as proxy:
        assert proxy.state() == tango.DevState.ON
    assert "REST API of" not in caplog.text


# -- the REST server in-process, over a real service -------------------------------------------


@pytest.fixture
def served(make_service: Any) -> Iterator[tuple[Any, server.RestServer]]:
    # large arguments allowed: test_a_slow_client_never_slows_the_service sends 400 kB ones
    ses = make_service(script_roots=[str(SCRIPTS)], max_running=4, max_argument_size=10**6)
    srv = server.RestServer(ses, "127.0.0.1", 0, stream_queue=8, name="test/oet/1")
    srv.start()
    try:
        yield ses, srv
    finally:
        srv.stop()


def test_openapi_and_docs_pages(served: tuple[Any, server.RestServer]) -> None:
    _, srv = served
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=TIMEOUT) as http:
        spec = ok(http.get(f"{PREFIX}/openapi.json"))
        assert spec["info"]["title"] == "Observation Execution Tool (test/oet/1)"
        paths = spec["paths"]
        assert set(paths) == {f"{PREFIX}/procedures", f"{PREFIX}/procedures/{{procedure_id}}",
                              f"{PREFIX}/stream"}  # fmt: skip
        assert set(paths[f"{PREFIX}/procedures"]) == {"get", "post"}
        assert set(paths[f"{PREFIX}/procedures/{{procedure_id}}"]) == {"get", "put"}
        schemas = spec["components"]["schemas"]
        assert {"ProcedurePostRequest", "ProcedurePutRequest", "SummaryModel"} <= set(schemas)
        assert set(schemas["ProcedurePutRequest"]["properties"]) == {
            "state", "script_args", "abort", "force_start",
        }  # fmt: skip
        page = http.get(f"{PREFIX}/ui")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert f"{PREFIX}/openapi.json" in page.text
        # Swagger UI comes from this server, not from a CDN
        assert "cdn." not in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"{PREFIX}/ui/static/{asset}" in page.text
            assert http.get(f"{PREFIX}/ui/static/{asset}").status_code == 200
        root = http.get("/")
        assert root.status_code in (302, 307) and root.headers["location"] == f"{PREFIX}/ui"


def test_a_client_that_disconnects_costs_nothing(served: tuple[Any, server.RestServer]) -> None:
    _, srv = served
    http = httpx.Client(base_url=srv.url, timeout=TIMEOUT)
    stream = Stream(http)
    assert srv.hub.count == 1
    stream.close()
    assert srv.hub.wait_for_count(0, TIMEOUT), "the stream's listener was not removed"
    # the service goes on, and a new client gets what happens next
    again = Stream(http)
    pid = ok(http.post("/procedures", json=post_body("hello.py")), 201)["id"]
    assert again.until(pid, {"READY"})["id"] == pid
    again.close()
    assert srv.hub.wait_for_count(0, TIMEOUT)
    http.close()


def test_a_slow_client_never_slows_the_service(served: tuple[Any, server.RestServer]) -> None:
    """A client that stops reading: the service's changes go on at full speed, another client
    gets every one, and the slow one, when it reads again, is told how many it missed."""
    ses, srv = served
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(f"GET {PREFIX}/stream HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    seen = b""
    while b"connected" not in seen:
        seen += slow.recv(4096)
    http = httpx.Client(base_url=srv.url, timeout=TIMEOUT)
    fast = Stream(http)
    assert srv.hub.wait_for_count(2, TIMEOUT)
    # each change carries 400 kB: more than the slow client's socket buffers (at most about
    # 4 MB on each side here) and its queue (8 changes) hold, in a few procedures
    blob = "x" * 400_000
    pids: list[int] = []
    for _ in range(6):  # one at a time, at the service's own pace
        pid = ok(http.post("/procedures", json=post_body("hello.py", blob=blob)), 201)["id"]
        pids.append(pid)
        ses.wait_for_state(pid, ProcedureState.READY, TIMEOUT)
        ses.start(ui.parse_start(json.dumps({"id": pid})))
        assert ses.wait_for_state(pid, FINAL_STATES, TIMEOUT).state is ProcedureState.COMPLETE
        # a client that keeps up: it has read each procedure's 8 changes before the next
        assert fast.until(pid, {"COMPLETE"})["id"] == pid
    assert all(e["topic"] != rest.DROPPED_TOPIC for e in fast.events), "fast lost some"
    for pid in pids:
        assert fast.states(pid) == ["CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING",
                                    "READY", "COMPLETE"]  # fmt: skip
    dropped = sorted(srv.hub.dropped())
    assert dropped[0] == 0 and dropped[-1] > 0, dropped  # the fast client none, the slow some
    # the slow client reads again: what it kept, a notice of what it missed, the newest
    slow.settimeout(TIMEOUT)
    marker = rest.DROPPED_TOPIC.encode()
    text = b""
    while marker not in text or b'"COMPLETE"' not in text.rsplit(marker, 1)[-1]:
        chunk = slow.recv(1 << 20)
        assert chunk, "the stream ended"
        text += chunk
    notice = next(
        json.loads(line[len(b"data: ") :])
        for line in text.split(b"\n")
        if line.startswith(b"data: ") and marker in line
    )
    assert notice["dropped"] > 0 and "GET /procedures" in notice["detail"]
    slow.close()
    fast.close()
    assert srv.hub.wait_for_count(0, TIMEOUT)
    http.close()


FINAL_STATES = {ProcedureState.COMPLETE, ProcedureState.STOPPED, ProcedureState.FAILED}


def test_stopping_the_server_ends_its_streams(make_service: Any) -> None:
    ses = make_service(script_roots=[str(SCRIPTS)])
    srv = server.RestServer(ses, "127.0.0.1", 0)
    srv.start()
    http = httpx.Client(base_url=srv.url, timeout=TIMEOUT)
    stream = Stream(http)
    srv.stop()
    assert stream.next() is None
    assert not srv.running
    with pytest.raises(httpx.TransportError):
        http.get("/procedures")
    stream.close()
    http.close()


def test_stream_clients_are_bounded(make_service: Any) -> None:
    ses = make_service(script_roots=[str(SCRIPTS)])
    srv = server.RestServer(ses, "127.0.0.1", 0, max_streams=1)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
            first = Stream(http)
            refused(http.get("/stream"), 503, "Too many stream clients (at most 1)")
            first.close()
            assert srv.hub.wait_for_count(0, TIMEOUT)
            Stream(http).close()  # the place is free again
    finally:
        srv.stop()


def test_serve_refuses_bad_settings_without_raising(make_service: Any, caplog: Any) -> None:
    ses = make_service(script_roots=[str(SCRIPTS)])
    caplog.set_level(logging.INFO)
    assert server.serve(ses, "127.0.0.1", 0) is None  # off
    assert server.serve(ses, "127.0.0.1", 70000) is None
    assert "not a TCP port" in caplog.text
    assert server.serve(ses, "127.0.0.1", free_port(), prefix="/../x") is None
    assert "REST prefix" in caplog.text
    srv = server.serve(ses, "localhost", free_port(), prefix="/custom/")
    assert srv is not None
    try:
        assert srv.url.endswith("/custom")
        assert httpx.get(f"{srv.url}/procedures", timeout=TIMEOUT).json() == []
    finally:
        srv.stop()
    assert "not a loopback address" not in caplog.text
    # an address this machine does not have (TEST-NET-1: binding it fails at once, sends
    # nothing): logged as the operator's choice, then refused, and serve returns None
    assert server.serve(ses, "192.0.2.1", free_port()) is None
    assert "192.0.2.1, which is not a loopback address" in caplog.text
    assert "check RestHost" in caplog.text


def test_loopback_addresses() -> None:
    assert server.is_loopback("127.0.0.1") and server.is_loopback("localhost")
    assert server.is_loopback("::1") and server.is_loopback("127.0.0.2")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("::")
    assert not server.is_loopback("192.0.2.1")


def test_the_put_and_post_models_have_the_reference_shapes() -> None:
    put = ui.ProcedurePutRequest.model_validate({"state": "RUNNING", "script_args": {"main": {}}})
    assert put.state == "RUNNING" and put.abort is False
    assert ui.ProcedurePutRequest.model_validate({}).state is None
    stop = ui.ProcedurePutRequest.model_validate({"state": "STOPPED", "abort": True})
    assert stop.abort is True
    post = ui.ProcedurePostRequest.model_validate({"script": script("hello.py")})
    assert post.to_command().script.script_uri == script("hello.py")["script_uri"]
