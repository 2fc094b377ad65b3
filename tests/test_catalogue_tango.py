"""The catalogue through a real device (DeviceTestContext, forked) and through the ``oet``
command line run as a user runs it, against that device."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pytest
import tango
from tango.test_context import DeviceTestContext

from ska_oso_oet.procedure import catalogue
from ska_oso_oet.tango.device import ObservationExecutionTool
from ska_oso_oet.tango.ska import AdminMode
from tests.helpers import SummaryEvents, run_oet

pytestmark = [pytest.mark.forked, pytest.mark.tango]

TIMEOUT = 30

OBSERVE = '''"""Observe a target with one subarray.

Prepare with the subarray, then start main with the target."""
import functools
import json


def main(*args, **kwargs):
    """Placeholder: init binds the subarray."""
    raise RuntimeError("prepare me with init first")


def init(subarray_id: int):
    """Bind the subarray."""
    global main
    main = functools.partial(_main, subarray_id)


def _main(subarray_id: int, target: str, marker: str, dwell: float = 1.0):
    """Point at target and dwell."""
    with open(marker, "w") as f:
        json.dump({"subarray_id": subarray_id, "target": target, "dwell": dwell}, f)
'''


@pytest.fixture
def roots(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A script root (observe.py, a broken file, a link out) and a folder outside it."""
    root = tmp_path / "scripts"
    (root / "sub").mkdir(parents=True)
    (root / "observe.py").write_text(OBSERVE)
    (root / "sub" / "broken.py").write_text("def main(\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    ran = tmp_path / "outside-ran"
    (outside / "secret.py").write_text(f"open({str(ran)!r}, 'w').close()\ndef main():\n    pass\n")
    os.symlink(outside / "secret.py", root / "secret.py")
    return root, outside


@pytest.fixture
def context(roots: tuple[pathlib.Path, pathlib.Path]) -> Iterator[DeviceTestContext]:
    properties = {"ScriptRoots": [str(roots[0])], "StopGracePeriod": 1.0}
    context = DeviceTestContext(
        ObservationExecutionTool, device_name="oet/executor/1", properties=properties
    )
    with context:  # context.get_device_access(): the address a CLI can reach
        yield context


@pytest.fixture
def device(context: DeviceTestContext) -> tango.DeviceProxy:
    return context.device


def uri(root: pathlib.Path, name: str) -> str:
    return f"file://{os.path.realpath(root)}/{name}"


def test_list_scripts_describes_the_roots_and_a_listed_script_runs_as_described(
    device, roots, tmp_path
):
    root, _ = roots
    entries = json.loads(device.ListScripts(""))
    observe = {
        "script_uri": uri(root, "observe.py"),
        "doc": "Observe a target with one subarray.\n\n"
        "Prepare with the subarray, then start main with the target.",
        "functions": [
            {
                "name": "main",
                "signature": "(target: str, marker: str, dwell: float = 1.0)",
                "doc": "Point at target and dwell.",
                "kind": "partial",
                "wraps": "_main",
                "bound_in": "init",
            },
            {"name": "init", "signature": "(subarray_id: int)", "doc": "Bind the subarray."},
        ],
    }
    assert entries == [
        observe,
        {
            "script_uri": uri(root, "sub/broken.py"),
            "doc": None,
            "functions": [],
            "error": "SyntaxError: '(' was never closed (line 1)",
        },
    ]
    assert entries == catalogue.list_scripts([str(root)])
    assert not (tmp_path / "outside-ran").exists()

    # what the catalogue says is what the device runs: prepare the listed URI, start main with
    # the parameters the catalogue gave
    events = SummaryEvents(device)
    request = {
        "script": {"script_type": "filesystem", "script_uri": observe["script_uri"]},
        "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 3}}},
    }
    pid = json.loads(device.Prepare(json.dumps(request)))["id"]
    events.wait_for(pid, {"READY"})
    marker = tmp_path / "observed.json"
    kwargs = {"target": "M31", "marker": str(marker)}
    start = {"id": pid, "fn_name": "main", "run_args": {"args": [], "kwargs": kwargs}}
    device.Start(json.dumps(start))
    assert events.wait_for(pid, {"COMPLETE", "FAILED"}, TIMEOUT)["state"] == "COMPLETE"
    assert json.loads(marker.read_text()) == {"subarray_id": 3, "target": "M31", "dwell": 1.0}
    events.close()


def test_list_scripts_sees_changes_and_answers_while_disabled(device, roots):
    root, _ = roots
    before = json.loads(device.ListScripts(""))
    (root / "sub" / "broken.py").write_text('"""Mended."""\n\n\ndef main(n=2):\n    pass\n')
    device.adminMode = AdminMode.OFFLINE  # reading the catalogue changes nothing: allowed
    after = json.loads(device.ListScripts('""'))
    assert after[0] == before[0]
    assert after[1] == {
        "script_uri": uri(root, "sub/broken.py"),
        "doc": "Mended.",
        "functions": [{"name": "main", "signature": "(n=2)", "doc": None}],
    }


def test_list_scripts_refuses_an_argument(device):
    with pytest.raises(tango.DevFailed) as caught:
        device.ListScripts("[1]")
    assert caught.value.args[0].reason == "OET_InvalidRequest"
    assert "takes no argument" in caught.value.args[0].desc


def test_no_script_roots_no_scripts():
    with DeviceTestContext(ObservationExecutionTool, device_name="oet/executor/1") as proxy:
        assert json.loads(proxy.ListScripts("")) == []


def test_oet_scripts_lists_the_catalogue_for_people_and_as_json(context, roots):
    root, _ = roots
    shown = run_oet(context.get_device_access(), "scripts")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        uri(root, "observe.py"),
        "    Observe a target with one subarray.",
        "    main(target: str, marker: str, dwell: float = 1.0)  "
        "[init binds it: partial of _main]  - Point at target and dwell.",
        "    init(subarray_id: int)  - Bind the subarray.",
        uri(root, "sub/broken.py"),
        "    cannot be read: SyntaxError: '(' was never closed (line 1)",
    ]
    raw = run_oet(context.get_device_access(), "scripts", "--json")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout) == json.loads(context.device.ListScripts(""))


def test_oet_prepare_help_points_to_oet_scripts(context):
    shown = run_oet(context.get_device_access(), "prepare", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "`oet scripts` lists" in " ".join(shown.stdout.split())
