"""The ObservationExecutionTool device in a Tango test context (each test forked)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet.tango.device import ObservationExecutionTool
from ska_oso_oet.tango.ska import AdminMode, HealthState
from tests.helpers import SCRIPTS, SummaryEvents, device_properties

pytestmark = [pytest.mark.forked, pytest.mark.tango]

TIMEOUT = 20
FINAL = {"COMPLETE", "STOPPED", "FAILED"}


@pytest.fixture
def device(tmp_path) -> Iterator[tango.DeviceProxy]:
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties=device_properties(tmp_path),
    ) as proxy:
        yield proxy


def prepare(device, name: str, **init_kwargs: Any) -> dict[str, Any]:
    request = {
        "script": {"script_type": "filesystem", "script_uri": f"file://{SCRIPTS / name}"},
        "script_args": {"init": {"args": [], "kwargs": init_kwargs}},
    }
    return json.loads(device.Prepare(json.dumps(request)))


def start(device, pid: int, fn: str = "main", **kwargs: Any) -> dict[str, Any]:
    request = {"id": pid, "fn_name": fn, "run_args": {"args": [], "kwargs": kwargs}}
    return json.loads(device.Start(json.dumps(request)))


def test_a_whole_lifecycle_is_seen_by_every_subscriber_in_order(device):
    subscribers = [SummaryEvents(device), SummaryEvents(device)]
    created = prepare(device, "with_init.py", subarray_id=1)
    assert created["state"] == "CREATING"
    assert created["script"] == {
        "script_type": "filesystem",
        "script_uri": f"file://{SCRIPTS / 'with_init.py'}",
    }
    pid = created["id"]
    subscribers[0].wait_for(pid, {"READY"})
    start(device, pid, "main", x=1)
    final = subscribers[0].wait_for(pid, FINAL)
    subscribers[1].wait_for(pid, FINAL)
    expected = [
        "CREATING", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY",
        "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip
    assert [s for s, _ in final["history"]["process_states"]] == expected
    assert final["script_args"] == {
        "init": {"args": [], "kwargs": {"subarray_id": 1}},
        "main": {"args": [], "kwargs": {"x": 1}},
    }
    for sub in subscribers:
        assert sub.errors == []
        # every state change came as its own event: none skipped, none out of order
        assert sub.states_seen(pid) == ["CREATING", "IDLE", "LOADING", "IDLE",
                                        "INITIALISING", "READY", "RUNNING", "READY",
                                        "COMPLETE"]  # fmt: skip
    assert json.loads(device.procedureSummaries)[0]["state"] == "COMPLETE"
    assert json.loads(device.Summarise(json.dumps([pid])))[0]["id"] == pid
    assert json.loads(device.Summarise("")) == json.loads(device.Summarise("[]"))
    assert json.loads(device.Summarise('""')) == json.loads(device.Summarise(""))


def test_device_state_is_running_while_a_script_runs(device):
    states: list[tango.DevState] = []
    cond = threading.Condition()

    def on_state(event: Any) -> None:
        if not event.err:
            with cond:
                states.append(event.attr_value.value)
                cond.notify_all()

    device.subscribe_event("State", tango.EventType.CHANGE_EVENT, on_state)
    events = SummaryEvents(device)
    pid = prepare(device, "sleeper.py")["id"]
    events.wait_for(pid, {"READY"})
    start(device, pid)
    with cond:
        assert cond.wait_for(lambda: tango.DevState.RUNNING in states, TIMEOUT)
    assert device.state() == tango.DevState.RUNNING
    assert json.loads(device.Stop(json.dumps({"id": pid, "run_abort": False}))) == []
    assert events.wait_for(pid, FINAL)["state"] == "STOPPED"
    with cond:
        assert cond.wait_for(lambda: states[-1] == tango.DevState.ON, TIMEOUT)
    assert states[0] == tango.DevState.ON


def test_stop_with_abort_returns_the_abort_procedure(device):
    events = SummaryEvents(device)
    pid = prepare(device, "sleeper.py", subarray_id=3)["id"]
    events.wait_for(pid, {"READY"})
    start(device, pid)
    events.wait_for(pid, {"RUNNING"})
    (abort,) = json.loads(device.Stop(json.dumps({"id": pid, "run_abort": True})))
    assert abort["script_args"]["init"]["kwargs"] == {"subarray_id": 3}
    assert events.wait_for(pid, FINAL)["state"] == "STOPPED"
    assert events.wait_for(abort["id"], FINAL)["state"] == "COMPLETE"


@pytest.mark.parametrize(
    "command, request_text, reason, words",
    [
        ("Prepare", "not json", "OET_InvalidRequest", "not valid JSON"),
        ("Prepare", "{}", "OET_InvalidRequest", "script is required"),
        (
            "Prepare",
            '{"script": {"script_type": "filesystem", "script_uri": "/x.py"}}',
            "OET_InvalidRequest",
            "must start with 'file://'",
        ),
        (
            "Prepare",
            '{"script": {"script_type": "filesystem", "script_uri": "file:///etc/passwd"}}',
            "OET_Refused",
            "outside the allowed script directories",
        ),
        (
            "Prepare",
            '{"script": {"script_type": "ftp", "script_uri": "file:///x.py"}}',
            "OET_InvalidRequest",
            "script",
        ),
        ("Start", '{"id": 99}', "OET_UnknownProcedure", "No procedure with ID 99"),
        ("Start", '{"id": "one"}', "OET_InvalidRequest", "id"),
        ("Start", '{"id": 1, "fn": "main"}', "OET_InvalidRequest", "fn is not a known field"),
        ("Stop", '{"id": 5}', "OET_UnknownProcedure", "No procedure with ID 5"),
        ("Summarise", '{"id": 1}', "OET_InvalidRequest", "list of procedure IDs"),
        ("Summarise", "[7]", "OET_UnknownProcedure", "No procedure with ID 7"),
        ("Summarise", "[true]", "OET_InvalidRequest", "list of procedure IDs"),
        ("Stop", '{"id": true}', "OET_InvalidRequest", "id"),
        ("Stop", '{"id": "1"}', "OET_InvalidRequest", "id"),
        ("Stop", '{"id": 1.0}', "OET_InvalidRequest", "id"),
        ("Stop", '{"id": 1, "run_abort": "yes"}', "OET_InvalidRequest", "run_abort"),
        ("Start", '{"id": 1, "force_start": 1}', "OET_InvalidRequest", "force_start"),
    ],
)
def test_bad_requests_raise_devfailed_a_person_can_act_on(
    device, command, request_text, reason, words
):
    with pytest.raises(tango.DevFailed) as caught:
        device.command_inout(command, request_text)
    error = caught.value.args[0]
    assert error.reason == reason
    assert words in error.desc
    assert device.state() == tango.DevState.ON


def test_a_failing_script_leaves_the_device_on_with_the_stacktrace(device):
    events = SummaryEvents(device)
    pid = prepare(device, "failing.py")["id"]
    events.wait_for(pid, {"READY"})
    start(device, pid)
    failed = events.wait_for(pid, FINAL)
    assert failed["state"] == "FAILED"
    assert "the telescope is on fire" in failed["history"]["stacktrace"]
    assert device.state() == tango.DevState.ON
    assert device.healthState == HealthState.OK


def test_admin_mode_offline_disables_prepare_and_start(device):
    events = SummaryEvents(device)
    pid = prepare(device, "hello.py")["id"]
    events.wait_for(pid, {"READY"})
    device.adminMode = AdminMode.OFFLINE
    assert device.state() == tango.DevState.DISABLE
    for call in (lambda: prepare(device, "hello.py"), lambda: start(device, pid)):
        with pytest.raises(tango.DevFailed) as caught:
            call()
        assert caught.value.args[0].reason == "OET_Disabled"
        assert "adminMode" in caught.value.args[0].desc
    device.Stop(json.dumps({"id": pid}))  # stopping stays possible
    assert events.wait_for(pid, FINAL)["state"] == "STOPPED"
    device.adminMode = AdminMode.ENGINEERING
    assert device.state() == tango.DevState.ON
    assert prepare(device, "hello.py")["state"] == "CREATING"


def test_wait_for_qa_ready_reaches_scripts_in_their_context(device, tmp_path):
    out = tmp_path / "qa.txt"
    (tmp_path / "qa.py").write_text(
        "def main(context=None):\n"
        f"    open({str(out)!r}, 'w').write(str(context.wait_for_qa_ready))\n"
    )
    device.waitForQaReady = True
    assert device.waitForQaReady is True
    events = SummaryEvents(device)
    request = {"script": {"script_type": "filesystem", "script_uri": f"file://{tmp_path}/qa.py"}}
    pid = json.loads(device.Prepare(json.dumps(request)))["id"]
    events.wait_for(pid, {"READY"})
    start(device, pid)
    assert events.wait_for(pid, FINAL)["state"] == "COMPLETE"
    assert out.read_text() == "True"


def test_ska_attributes(device):
    assert device.versionId
    assert "pytango" in device.buildState
    assert device.healthState == HealthState.OK
    assert device.adminMode == AdminMode.ONLINE
    device.loggingLevel = 5
    assert device.loggingLevel == 5
    labels = device.get_attribute_config("adminMode").enum_labels
    assert list(labels) == ["ONLINE", "OFFLINE", "ENGINEERING", "NOT_FITTED", "RESERVED"]


def test_prepare_returns_at_once_while_init_runs(device):
    events = SummaryEvents(device)
    created = prepare(device, "slow_init.py", seconds=60)
    assert created["state"] == "CREATING"
    events.wait_for(created["id"], {"INITIALISING"})
    device.Stop(json.dumps({"id": created["id"]}))
    assert events.wait_for(created["id"], FINAL)["state"] == "STOPPED"


def test_a_bad_configuration_puts_the_device_in_fault():
    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties={"AbortScript": "not-a-uri", "ScriptRoots": [str(SCRIPTS)]},
    ) as proxy:
        assert proxy.state() == tango.DevState.FAULT
        assert "AbortScript" in proxy.status() or "file://" in proxy.status()
        with pytest.raises(tango.DevFailed):
            proxy.Summarise("")


def test_init_with_a_bad_configuration_pushes_state_fault(caplog):
    """The list pushed after a failed init comes with State and Status FAULT events, and
    the event thread logs no traceback doing it."""
    seen: dict[str, list[Any]] = {"state": [], "status": []}
    cond = threading.Condition()

    def on_event(event: Any) -> None:
        if not event.err:
            with cond:
                seen[event.attr_value.name.lower()].append(event.attr_value.value)
                cond.notify_all()

    with DeviceTestContext(
        ObservationExecutionTool,
        device_name="oet/executor/1",
        properties={"AbortScript": "not-a-uri", "ScriptRoots": [str(SCRIPTS)]},
    ) as proxy:
        for name in seen:
            proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, on_event)
        with cond:  # the first event of a subscription is the value read then
            assert cond.wait_for(lambda: seen["state"] and seen["status"], TIMEOUT)
            before = {name: len(values) for name, values in seen.items()}
        proxy.Init()  # the configuration is still bad: the device pushes FAULT again
        with cond:
            assert cond.wait_for(lambda: all(len(seen[n]) > before[n] for n in seen), TIMEOUT), (
                seen
            )
        assert seen["state"][-1] == tango.DevState.FAULT
        assert "Bad device configuration" in seen["status"][-1]
        assert proxy.state() == tango.DevState.FAULT
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert tracebacks == []


def test_init_ends_every_worker_and_keeps_the_history(tmp_path):
    import psutil

    pid_file = tmp_path / "pid"
    (tmp_path / "pid_sleeper.py").write_text(
        "import os, time\n\n\ndef init():\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n\n\n"
        "def main():\n    time.sleep(600)\n"
    )
    properties = {
        "ScriptRoots": [str(SCRIPTS), str(tmp_path)],
        "StopGracePeriod": 3.0,
        "MaxRunning": 2,
    }
    with DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=properties
    ) as device:
        events = SummaryEvents(device)
        uri = f"file://{tmp_path}/pid_sleeper.py"
        request = {"script": {"script_type": "filesystem", "script_uri": uri}}
        pid = json.loads(device.Prepare(json.dumps(request)))["id"]
        events.wait_for(pid, {"READY"})
        start(device, pid)
        events.wait_for(pid, {"RUNNING"})
        worker = int(pid_file.read_text())
        assert psutil.pid_exists(worker)
        stubborn = prepare(device, "stubborn.py")["id"]
        events.wait_for(stubborn, {"READY"})
        start(device, stubborn)  # it ignores SIGTERM: Init kills it after its short grace
        events.wait_for(stubborn, {"RUNNING"})
        assert device.get_timeout_millis() == 3000
        device.Init()  # returns within the client's 3 s although StopGracePeriod is 3 s
        assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
        # the procedures Init stopped are history now, kept as they ended
        kept = json.loads(device.Summarise(""))
        assert [(s["id"], s["state"]) for s in kept] == [(pid, "STOPPED"), (stubborn, "STOPPED")]
        assert device.state() == tango.DevState.ON
        # subscribers were told how the procedures ended, then the list as it now is
        assert events.wait_for(pid, FINAL)["state"] == "STOPPED"
        assert events.wait_for(stubborn, FINAL)["state"] == "STOPPED"
        events.wait_until(lambda received: [s["state"] for s in received[-1]] == ["STOPPED"] * 2)
        # and IDs go on increasing, so that no client sees one ID twice
        assert prepare(device, "hello.py")["id"] == stubborn + 1


def test_git_scripts_through_the_device(tmp_path, repo):
    properties = {
        "ScriptRoots": [str(SCRIPTS)],
        "AllowedGitRepositories": [f"file://{tmp_path}/*"],
        "GitCacheDirectory": str(tmp_path / "cache"),
    }
    with DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=properties
    ) as device:
        events = SummaryEvents(device)
        request = {
            "script": {
                "script_type": "git",
                "script_uri": "git://scripts/uses_dep.py",
                "git_args": {"git_repo": repo.url, "git_branch": "main", "git_commit": None},
                "create_env": True,
            }
        }
        created = json.loads(device.Prepare(json.dumps(request)))
        assert created["script"]["git_args"]["git_branch"] == "main"
        events.wait_for(created["id"], {"READY"})
        start(device, created["id"])
        final = events.wait_for(created["id"], FINAL)
        assert final["state"] == "COMPLETE", final["history"]["stacktrace"]
        assert "PREP_ENV" in [s for s, _ in final["history"]["process_states"]]
        request["script"]["git_args"]["git_repo"] = "https://example.invalid/x.git"
        with pytest.raises(tango.DevFailed) as caught:
            device.Prepare(json.dumps(request))
        assert "not an allowed script source" in caught.value.args[0].desc


def test_two_devices_in_one_server_keep_their_procedures_apart():
    from tango.test_context import MultiDeviceTestContext

    devices_info = [
        {
            "class": ObservationExecutionTool,
            "devices": [
                {"name": "oet/executor/1", "properties": {"ScriptRoots": [str(SCRIPTS)]}},
                {"name": "oet/executor/2", "properties": {"ScriptRoots": [str(SCRIPTS)]}},
            ],
        }
    ]
    with MultiDeviceTestContext(devices_info) as context:
        one, two = context.get_device("oet/executor/1"), context.get_device("oet/executor/2")
        events_one, events_two = SummaryEvents(one), SummaryEvents(two)
        first = prepare(one, "hello.py")["id"]
        second = prepare(two, "with_init.py")["id"]
        assert first == second == 1  # each device numbers its own procedures
        events_one.wait_for(first, {"READY"})
        events_two.wait_for(second, {"READY"})
        start(one, first)
        assert events_one.wait_for(first, FINAL)["state"] == "COMPLETE"
        assert json.loads(two.Summarise(""))[0]["state"] == "READY"  # untouched
        scripts_seen_by_two = {
            s["script"]["script_uri"] for event in events_two.events for s in event
        }
        assert scripts_seen_by_two == {f"file://{SCRIPTS / 'with_init.py'}"}


def test_a_start_whose_arguments_do_not_fit_is_an_invalid_request(device, tmp_path):
    events = SummaryEvents(device)
    pid = prepare(device, "styles.py", subarray_id=2)["id"]
    events.wait_for(pid, {"READY"})
    with pytest.raises(tango.DevFailed) as caught:
        start(device, pid, marker="m", bogus=1)
    error = caught.value.args[0]
    assert error.reason == "OET_InvalidRequest"
    assert "unexpected keyword argument 'bogus'" in error.desc and "still READY" in error.desc
    with pytest.raises(tango.DevFailed, match="has no function 'run'"):
        start(device, pid, "run")
    assert json.loads(device.Summarise(json.dumps([pid])))[0]["state"] == "READY"
    start(device, pid, marker=str(tmp_path / "called.json"))
    assert events.wait_for(pid, FINAL)["state"] == "COMPLETE"


def test_list_scripts_reads_the_script_roots_without_running_anything(device):
    entries = json.loads(device.ListScripts(""))
    by_uri = {e["script_uri"]: e for e in entries}
    hello = by_uri[f"file://{SCRIPTS / 'hello.py'}"]
    assert "main" in [f["name"] for f in hello["functions"]]
    assert by_uri[f"file://{SCRIPTS / 'syntax_error.py'}"]["error"].startswith("SyntaxError")
    assert any(uri.endswith("/abort.py") for uri in by_uri)  # the second root
    with pytest.raises(tango.DevFailed, match="takes no argument"):
        device.ListScripts("[1]")
