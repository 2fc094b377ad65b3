"""The operator's face of the device: typed attributes and their events, one-button commands,
set points that say what is in force, and logging targets (a Tango test context, forked)."""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tango
from tango.server import Device, attribute, command
from tango.test_context import DeviceTestContext, MultiDeviceTestContext

from ska_oso_oet.tango.device import ObservationExecutionTool
from ska_oso_oet.tango.ska import LoggingLevel
from tests.helpers import SCRIPTS, TIMEOUT, device_properties, joined

pytestmark = [pytest.mark.forked, pytest.mark.tango]

FINAL = {"COMPLETE", "STOPPED", "FAILED"}
FACE = [
    "procedureIds",
    "procedureStates",
    "procedureScripts",
    "runningProcedureIds",
    "lastFailure",
]


def uri(name: str) -> str:
    return f"file://{SCRIPTS / name}"


@pytest.fixture
def device(tmp_path: pathlib.Path) -> Iterator[tango.DeviceProxy]:
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties=device_properties(tmp_path, MaxRunning=2),
    ) as proxy:
        yield proxy


class Changes:
    """Subscribes to procedureChange; in each callback reads every typed attribute as well, so
    the test can check that what a client reads there agrees with the event it handles."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.proxy = proxy
        self.seen: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (change, face read then)
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._reader = tango.DeviceProxy(proxy.dev_name())
        self._id = proxy.subscribe_event(
            "procedureChange", tango.EventType.CHANGE_EVENT, self._callback
        )
        joined(proxy)

    def _callback(self, event: Any) -> None:
        if event.err:
            with self._cond:
                self.errors.append(event.errors[0].desc)
            return
        text = event.attr_value.value
        if not text:
            return  # the empty first value: no procedure has changed yet
        face = {name: _value(self._reader.read_attribute(name)) for name in FACE}
        with self._cond:
            self.seen.append((json.loads(text), face))
            self._cond.notify_all()

    def states(self, pid: int) -> list[str]:
        with self._cond:
            return [change["state"] for change, _ in self.seen if change["id"] == pid]

    def wait_for(self, pid: int, states: set[str]) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((c for c, _ in self.seen if c["id"] == pid and c["state"] in states), None)

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, TIMEOUT), (
                f"{pid} never reached {states}: {self.states(pid)}"
            )
            change = found()
            assert change is not None
            return change


def _value(attr: Any) -> Any:
    value = attr.value
    if value is None:
        return []
    return list(value) if not isinstance(value, str) else value


def prepare(device: tango.DeviceProxy, name: str, **init_kwargs: Any) -> int:
    request = {
        "script": {"script_type": "filesystem", "script_uri": uri(name)},
        "script_args": {"init": {"args": [], "kwargs": init_kwargs}},
    }
    return int(json.loads(device.Prepare(json.dumps(request)))["id"])


WITH_INIT = ["CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY", "RUNNING", "READY",
             "COMPLETE"]  # fmt: skip


def test_procedure_change_and_the_typed_attributes_agree_through_a_lifecycle(
    device: tango.DeviceProxy,
) -> None:
    assert device.procedureChange == ""
    assert _value(device.read_attribute("procedureIds")) == []
    assert device.lastFailure == ""
    changes = Changes(device)
    pid = prepare(device, "with_init.py", subarray_id=1)
    changes.wait_for(pid, {"READY"})
    assert json.loads(device.StartProcedure(pid))["id"] == pid
    changes.wait_for(pid, {"COMPLETE"})

    assert changes.states(pid) == WITH_INIT  # one event per change, none skipped, in order
    for index, (change, face) in enumerate(changes.seen):
        # what a callback reads is never older than its event (it may be newer: the script
        # moves on while the client reads)
        assert face["procedureIds"] == [pid]
        [state] = face["procedureStates"]
        assert state in WITH_INIT[index:], (index, change["state"], face)
        assert face["procedureScripts"] == [uri("with_init.py")]
        # each attribute is read on its own: runningProcedureIds, read after procedureStates,
        # may be newer still (the callback of RUNNING may read it after COMPLETE); the test
        # below holds a procedure RUNNING to check the callback of its RUNNING exactly
        newer = WITH_INIT[WITH_INIT.index(state, index) :]
        assert face["runningProcedureIds"] in [[pid] if s == "RUNNING" else [] for s in newer]
    # the event carries the one summary, as Summarise gives it
    final = changes.wait_for(pid, {"COMPLETE"})
    assert final == json.loads(device.Summarise(json.dumps([pid])))[0]
    assert json.loads(device.procedureChange) == final
    assert changes.errors == []


def test_running_procedure_ids_hold_a_procedure_in_the_callback_of_its_running_change(
    device: tango.DeviceProxy,
) -> None:
    changes = Changes(device)
    pid = prepare(device, "sleeper.py")
    changes.wait_for(pid, {"READY"})
    device.StartProcedure(pid)
    changes.wait_for(pid, {"RUNNING"})
    [face] = [face for change, face in changes.seen if change["state"] == "RUNNING"]
    assert face["runningProcedureIds"] == [pid]
    assert face["procedureStates"] == ["RUNNING"]
    assert device.state() == tango.DevState.RUNNING
    device.StopProcedure(pid)
    changes.wait_for(pid, FINAL)
    assert _value(device.read_attribute("runningProcedureIds")) == []
    [face] = [face for change, face in changes.seen if change["state"] == "STOPPED"]
    assert face["runningProcedureIds"] == []


def test_attributes_have_labels_and_spectra_the_right_types(device: tango.DeviceProxy) -> None:
    for name in ("procedureChange", "runningProcedureIds", "lastFailure", "procedureIds"):
        config = device.get_attribute_config(name)
        assert config.label and config.label != name, name
        assert config.description and "No description" not in config.description, name
    assert device.get_attribute_config("procedureIds").data_type == tango.CmdArgType.DevLong64
    assert (
        device.get_attribute_config("procedureStates").data_format == tango.AttrDataFormat.SPECTRUM
    )
    # every one of them pushes change and archive events
    for name in ("procedureChange", *FACE):
        got: list[Any] = []
        done = threading.Event()

        def callback(event: Any, got: list[Any] = got, done: threading.Event = done) -> None:
            got.append(event)
            done.set()

        for kind in (tango.EventType.CHANGE_EVENT, tango.EventType.ARCHIVE_EVENT):
            done.clear()
            event_id = device.subscribe_event(name, kind, callback)
            assert done.wait(TIMEOUT), (name, kind)
            assert not got[-1].err, (name, kind, got[-1].errors)
            device.unsubscribe_event(event_id)


def test_last_failure_names_the_procedure_its_script_and_the_error(
    device: tango.DeviceProxy,
) -> None:
    changes = Changes(device)
    pid = prepare(device, "failing.py")
    changes.wait_for(pid, {"READY"})
    device.StartProcedure(pid)
    changes.wait_for(pid, {"FAILED"})
    expected = f"{pid} failing.py: RuntimeError: the telescope is on fire"
    assert device.lastFailure == expected
    # in the callback of the FAILED change, lastFailure already says so
    assert [
        face["lastFailure"] for change, face in changes.seen if change["state"] == "FAILED"
    ] == [expected]
    # a later success does not clear it: it is the latest failure
    ok = prepare(device, "hello.py")
    changes.wait_for(ok, {"READY"})
    device.StartProcedure(ok)
    changes.wait_for(ok, {"COMPLETE"})
    assert device.lastFailure == expected


def test_abort_stops_every_running_procedure_and_runs_the_abort_script_for_each(
    device: tango.DeviceProxy,
) -> None:
    changes = Changes(device)
    first, second = prepare(device, "sleeper.py"), prepare(device, "sleeper.py")
    idle = prepare(device, "hello.py")  # READY, not running: Abort leaves it alone
    for pid in (first, second, idle):
        changes.wait_for(pid, {"READY"})
    device.StartProcedure(first)
    device.StartProcedure(second)
    changes.wait_for(first, {"RUNNING"})
    changes.wait_for(second, {"RUNNING"})
    assert sorted(_value(device.read_attribute("runningProcedureIds"))) == [first, second]

    aborts = json.loads(device.Abort())
    assert len(aborts) == 2
    assert all(a["script"]["script_uri"].endswith("/abort.py") for a in aborts)
    for pid in (first, second):
        assert changes.wait_for(pid, FINAL)["state"] == "STOPPED"
    for abort in aborts:
        assert changes.wait_for(abort["id"], FINAL)["state"] == "COMPLETE"
    assert _value(device.read_attribute("runningProcedureIds")) == []
    assert changes.states(idle)[-1] == "READY"
    assert json.loads(device.Abort()) == []  # nothing running: nothing to do


def test_one_button_commands_take_a_bare_id_or_uri(device: tango.DeviceProxy) -> None:
    changes = Changes(device)
    created = json.loads(device.Prepare(uri("sleeper.py")))  # a bare URI, no JSON
    pid = created["id"]
    assert created["script"] == {"script_type": "filesystem", "script_uri": uri("sleeper.py")}
    changes.wait_for(pid, {"READY"})
    device.StartProcedure(pid)
    changes.wait_for(pid, {"RUNNING"})
    assert json.loads(device.StopProcedure(pid)) == []
    assert changes.wait_for(pid, FINAL)["state"] == "STOPPED"

    with pytest.raises(tango.DevFailed) as refused:
        device.StartProcedure(pid)
    assert refused.value.args[0].reason == "OET_Refused"
    assert str(pid) in refused.value.args[0].desc
    with pytest.raises(tango.DevFailed) as unknown:
        device.StopProcedure(9999)
    assert unknown.value.args[0].reason == "OET_UnknownProcedure"
    with pytest.raises(tango.DevFailed) as outside:
        device.Prepare("file:///etc/passwd")
    assert outside.value.args[0].reason == "OET_Refused"
    assert "ScriptRoots" in outside.value.args[0].desc or "allowed" in outside.value.args[0].desc


def test_set_points_say_what_is_in_force_from_the_start(device: tango.DeviceProxy) -> None:
    level = device.read_attribute("loggingLevel")
    assert level.value == LoggingLevel.INFO
    assert level.w_value == LoggingLevel.INFO  # not OFF: Apply on a panel keeps INFO
    qa = device.read_attribute("waitForQaReady")
    assert qa.value is False
    assert qa.w_value is False
    targets = device.read_attribute("loggingTargets")
    assert list(targets.value) == ["tango::logger"]  # SKA's default
    assert list(targets.w_value) == ["tango::logger"]


def test_logging_targets_are_checked_and_a_file_target_gets_the_records(
    device: tango.DeviceProxy, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "oet.log"
    device.loggingTargets = [f"file::{log}", "console::cout"]
    assert list(device.loggingTargets) == [f"file::{log}", "console::cout"]
    for bad, words in (
        (["nowhere::x"], "not a logging target"),
        (["file::relative.log"], "absolute path"),
        (["syslog::ftp://127.0.0.1"], "syslog::udp://"),
    ):
        with pytest.raises(tango.DevFailed) as refused:
            device.loggingTargets = bad
        assert refused.value.args[0].reason == "OET_InvalidRequest", bad
        assert words in refused.value.args[0].desc, (bad, refused.value.args[0].desc)
    with pytest.raises(tango.DevFailed):  # Tango itself holds the bound: max_dim_x 4
        device.loggingTargets = ["console::cout"] * 5
    assert list(device.loggingTargets) == [f"file::{log}", "console::cout"]  # unchanged

    changes = Changes(device)
    pid = prepare(device, "hello.py")
    changes.wait_for(pid, {"READY"})
    text = log.read_text()
    assert "|INFO|" in text  # SKA's format: time|level|thread|function|file#line|message
    assert f"procedure {pid}" in text.lower() or str(pid) in text

    device.loggingLevel = LoggingLevel.ERROR  # at loggingLevel: INFO records stop
    size = log.stat().st_size
    second = prepare(device, "hello.py")
    changes.wait_for(second, {"READY"})
    assert log.stat().st_size == size
    device.loggingTargets = []
    assert _value(device.read_attribute("loggingTargets")) == []


class LogConsumer(Device):
    """A Tango log consumer: Tango's device targets call its ``Log`` command; each record
    received is pushed as a change event of ``received``."""

    def init_device(self) -> None:
        super().init_device()
        self.records: list[list[str]] = []
        self.set_change_event("received", True, False)

    @command(dtype_in=(str,))
    def Log(self, record: list[str]) -> None:
        self.records.append(list(record))
        self.push_change_event("received", json.dumps(self.records))

    @attribute(dtype=str)
    def received(self) -> str:
        return json.dumps(self.records)


def test_a_device_target_reaches_a_tango_log_consumer(tmp_path: pathlib.Path) -> None:
    devices = [
        {"class": ObservationExecutionTool,
         "devices": [{"name": "oet/executor/1", "properties": device_properties(tmp_path)}]},
        {"class": LogConsumer, "devices": [{"name": "test/logconsumer/1"}]},
    ]  # fmt: skip
    with MultiDeviceTestContext(devices, process=False) as context:
        oet = context.get_device("oet/executor/1")
        consumer = context.get_device("test/logconsumer/1")
        with pytest.raises(tango.DevFailed) as refused:
            oet.loggingTargets = ["device::no/such/consumer"]
        assert refused.value.args[0].reason == "OET_InvalidRequest"
        assert "log consumer" in refused.value.args[0].desc
        assert list(oet.loggingTargets) == ["tango::logger"]

        target = f"device::{context.get_device_access('test/logconsumer/1')}"
        oet.loggingTargets = [target]
        assert list(oet.loggingTargets) == [target]
        received: list[list[str]] = []
        cond = threading.Condition()

        def callback(event: Any) -> None:
            if not event.err:
                with cond:
                    received[:] = json.loads(event.attr_value.value)
                    cond.notify_all()

        consumer.subscribe_event("received", tango.EventType.CHANGE_EVENT, callback)
        pid = prepare(oet, "hello.py")
        with cond:  # Tango's record: time, level, device, message, NDC, thread
            assert cond.wait_for(
                lambda: any(f"Procedure {pid}" in r[3] for r in received), TIMEOUT
            ), received
        record = next(r for r in received if f"Procedure {pid}" in r[3])
        assert record[1:3] == ["INFO", "oet/executor/1"]
