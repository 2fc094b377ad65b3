"""Unit tests of the pure parts of the ``oet`` command line: requests, tables, error lines."""

from __future__ import annotations

import datetime
import io
import json
import pathlib
from types import SimpleNamespace

import pytest

from ska_oso_oet import cli

UTC = datetime.UTC
T0 = datetime.datetime(2025, 11, 25, 1, 0, 0, 123000, tzinfo=UTC).timestamp()


def summary(pid: int = 1, state: str = "READY", **extra: object) -> dict:
    history = [["CREATING", T0], ["IDLE", T0 + 0.5], [state, T0 + 1.25]]
    base = {
        "id": pid,
        "script": {"script_type": "filesystem", "script_uri": "file:///abs/hello.py"},
        "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
        "history": {"process_states": history, "stacktrace": None},
        "state": state,
        "uri": None,
    }
    base.update(extra)
    return base


# -- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ('"3"', "3"),
        ("hello", "hello"),
        ("", ""),
        ("file:///x", "file:///x"),
    ],
)
def test_values_are_json_when_they_parse_else_strings(text: str, value: object) -> None:
    assert cli.parse_value(text) == value


def test_kwargs_split_on_the_first_equals_sign() -> None:
    assert cli.parse_kwargs(["a=1", "b=x=y", "c=", "d=[1]"]) == {
        "a": 1,
        "b": "x=y",
        "c": "",
        "d": [1],
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "not a name=3"])
def test_bad_kwargs_are_usage_errors(bad: str) -> None:
    with pytest.raises(cli.UsageError, match="NAME=VALUE"):
        cli.parse_kwargs([bad])


def test_prepare_request_for_a_file_script() -> None:
    request = cli.prepare_request(
        "file:///abs/hello.py", ["1", "two"], ["subarray_id=3", "mode=fast"]
    )
    assert request == {
        "script": {"script_type": "filesystem", "script_uri": "file:///abs/hello.py"},
        "script_args": {
            "init": {"args": [1, "two"], "kwargs": {"subarray_id": 3, "mode": "fast"}}
        },
    }


def test_a_bare_path_becomes_an_absolute_file_uri() -> None:
    request = cli.prepare_request("scripts/hello.py", cwd=pathlib.Path("/repo"))
    assert request["script"]["script_uri"] == "file:///repo/scripts/hello.py"
    assert cli.script_uri("/abs/x.py") == "file:///abs/x.py"


def test_prepare_request_for_a_git_script() -> None:
    request = cli.prepare_request(
        "git://scripts/obs.py",
        git_repo="https://gitlab.com/ska-telescope/oso/ska-oso-scripting.git",
        git_branch="main",
        create_env=True,
    )
    assert request["script"] == {
        "script_type": "git",
        "script_uri": "git://scripts/obs.py",
        "git_args": {
            "git_repo": "https://gitlab.com/ska-telescope/oso/ska-oso-scripting.git",
            "git_branch": "main",
            "git_commit": None,
        },
        "create_env": True,
    }
    assert request["script_args"] == {"init": {"args": [], "kwargs": {}}}


def test_git_without_a_repository_leaves_the_default_to_the_device() -> None:
    git_args = cli.prepare_request("git://x.py")["script"]["git_args"]
    assert git_args == {"git_branch": None, "git_commit": None}


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("ftp://host/x.py", "unsupported script URI scheme 'ftp'"),
        ("file://relative/x.py", "absolute path"),
        ("git://", "path in the repository"),
    ],
)
def test_bad_uris_are_usage_errors(uri: str, match: str) -> None:
    with pytest.raises(cli.UsageError, match=match):
        cli.prepare_request(uri)


def test_git_options_on_a_file_script_are_usage_errors() -> None:
    with pytest.raises(cli.UsageError, match="--git-branch, --create-env only apply to git"):
        cli.prepare_request("file:///x.py", git_branch="main", create_env=True)


def test_start_and_stop_requests() -> None:
    assert cli.start_request(3) == {
        "id": 3,
        "fn_name": "main",
        "run_args": {"args": [], "kwargs": {}},
        "force_start": False,
    }
    assert cli.start_request(3, "scan", ["1"], ["duration=2.5"], True) == {
        "id": 3,
        "fn_name": "scan",
        "run_args": {"args": [1], "kwargs": {"duration": 2.5}},
        "force_start": True,
    }
    assert cli.stop_request(4) == {"id": 4, "run_abort": False}
    assert cli.stop_request(4, abort=True) == {"id": 4, "run_abort": True}


@pytest.mark.parametrize(
    ("argv", "command", "argin"),
    [
        (
            ["prepare", "file:///a.py", "--kwarg", "subarray_id=1"],
            "Prepare",
            {
                "script": {"script_type": "filesystem", "script_uri": "file:///a.py"},
                "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
            },
        ),
        (
            ["create", "file:///a.py", "--arg", "x"],
            "Prepare",
            {
                "script": {"script_type": "filesystem", "script_uri": "file:///a.py"},
                "script_args": {"init": {"args": ["x"], "kwargs": {}}},
            },
        ),
        (
            ["start", "2", "--fn", "scan", "--arg", "1", "--arg", "b", "--force"],
            "Start",
            {
                "id": 2,
                "fn_name": "scan",
                "run_args": {"args": [1, "b"], "kwargs": {}},
                "force_start": True,
            },
        ),
        (["stop", "2", "--abort"], "Stop", {"id": 2, "run_abort": True}),
        (["describe", "7"], "Summarise", [7]),
    ],
)
def test_command_lines_become_device_requests(argv: list, command: str, argin: object) -> None:
    name, text = cli.request_for(cli.parse_args(argv))
    assert name == command
    assert json.loads(text) == argin


def test_list_asks_for_every_procedure() -> None:
    assert cli.request_for(cli.parse_args(["list"])) == ("Summarise", "")


def test_device_and_json_options_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OET_DEVICE", raising=False)
    args = cli.parse_args(["list"])
    assert (args.device, args.json) == ("oet/executor/1", False)
    args = cli.parse_args(["--device", "a/b/c", "list", "--json"])
    assert (args.device, args.json) == ("a/b/c", True)
    args = cli.parse_args(["list", "--device", "x/y/z"])
    assert args.device == "x/y/z"
    monkeypatch.setenv("OET_DEVICE", "oet/executor/2")
    assert cli.parse_args(["list"]).device == "oet/executor/2"
    assert cli.parse_args(["--device", "a/b/c", "list"]).device == "a/b/c"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["start"], "required: id"),
        (["start", "one"], "a procedure ID is a number, not 'one'"),
        (["stop", "1", "--bogus"], "unrecognized arguments"),
        (["start", "1", "--kwarg", "x"], "NAME=VALUE"),
        (["prepare", "ftp://x"], "unsupported"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.USAGE_ERROR
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("oet: error: ")
    assert match in err


# -- output ------------------------------------------------------------------------------------


def test_time_format_is_to_the_millisecond() -> None:
    assert cli.format_time(T0, UTC) == "2025-11-25 01:00:00.123"
    assert cli.format_time(None) == "-"


def test_table_aligns_columns_and_does_not_pad_the_last() -> None:
    text = cli.table(("A", "BB", "C"), [(1, "x", "long value"), (22, "yyyy", "z")])
    assert text.splitlines() == [
        "A   BB    C",
        "1   x     long value",
        "22  yyyy  z",
    ]


def test_list_table() -> None:
    text = cli.format_summaries(
        [summary(2, "RUNNING"), summary(1, "COMPLETE", script={"script_uri": "file:///b.py"})],
        UTC,
    )
    assert text.splitlines() == [
        "ID  STATE     SCRIPT                LAST CHANGE",
        "1   COMPLETE  file:///b.py          2025-11-25 01:00:01.373",
        "2   RUNNING   file:///abs/hello.py  2025-11-25 01:00:01.373",
    ]
    assert cli.format_summaries([]) == "No procedures."


def test_git_scripts_show_repository_and_branch() -> None:
    s = summary(
        script={
            "script_type": "git",
            "script_uri": "git://obs.py",
            "git_args": {"git_repo": "https://r.git", "git_branch": "dev", "git_commit": None},
            "create_env": False,
        }
    )
    assert cli.script_label(s) == "git://obs.py (https://r.git, dev)"
    assert "git:         repo=https://r.git, branch=dev" in cli.format_details(s, UTC)


def test_describe_shows_arguments_history_and_stacktrace() -> None:
    s = summary(
        3,
        "FAILED",
        script_args={
            "init": {"args": [], "kwargs": {"subarray_id": 1}},
            "main": {"args": [1, "a"], "kwargs": {"x": None}},
        },
    )
    s["history"]["stacktrace"] = "Traceback (most recent call last):\nValueError: boom\n"
    lines = cli.format_details(s, UTC).splitlines()
    assert lines[0] == "Procedure 3: FAILED"
    assert "  script:      file:///abs/hello.py (filesystem)" in lines
    assert "  init:        init(subarray_id=1)" in lines
    assert "  main:        main(1, 'a', x=None)" in lines
    assert "2025-11-25 01:00:00.123  CREATING" in lines
    assert "2025-11-25 01:00:00.623  IDLE" in lines
    assert "2025-11-25 01:00:01.373  FAILED" in lines
    assert lines[-3:] == ["Stacktrace:", "Traceback (most recent call last):", "ValueError: boom"]


def test_listen_reports_each_new_history_entry_once() -> None:
    tracker = cli.HistoryTracker()
    old = summary(1, "COMPLETE")
    tracker.baseline([old])
    assert tracker.new_entries([old]) == []
    new = summary(2, "IDLE")
    new["history"]["process_states"] = [["CREATING", T0]]
    assert [e for _, e in tracker.new_entries([old, new])] == [["CREATING", T0]]
    new["history"]["process_states"] += [["IDLE", T0 + 1], ["LOADING", T0 + 2]]
    entries = tracker.new_entries([old, new])
    assert [e[0] for _, e in entries] == ["IDLE", "LOADING"]
    line = cli.history_line(new, entries[-1][1], UTC)
    assert line == "2025-11-25 01:00:02.123     2  LOADING       file:///abs/hello.py"


def fake_error(reason: str, desc: str) -> SimpleNamespace:
    return SimpleNamespace(reason=reason, desc=desc, origin="somewhere")


def test_error_line_is_one_line() -> None:
    assert cli.error_line("bad\n  thing  happened\n") == "oet: error: bad thing happened"


def test_devfailed_message_uses_the_devices_own_reason() -> None:
    errors = [
        fake_error("OET_UnknownProcedure", "No procedure with ID 99"),
        fake_error("PyDs_UnexpectedFailure", "Cannot execute command"),
        fake_error("API_CommandFailed", "Failed to execute command_inout on device x"),
    ]
    assert cli.devfailed_message(errors) == "No procedure with ID 99"


def test_devfailed_message_for_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGO_HOST", "127.0.0.1:1")
    errors = [
        fake_error("API_CorbaException", "TRANSIENT CORBA system exception: ConnectFailed"),
        fake_error("API_CantConnectToDatabase", "Failed to connect to database on host x"),
    ]
    assert cli.devfailed_message(errors) == (
        "Failed to connect to database on host x (TANGO_HOST=127.0.0.1:1)"
    )


def test_a_device_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class DevFailedLike(Exception):
        pass

    class Proxy:
        def command_inout(self, name: str, argin: str) -> str:
            raise DevFailedLike(
                fake_error("OET_Refused", "Procedure 2 has already ended\n(FAILED)"),
                fake_error("API_CommandFailed", "Failed to execute command_inout"),
            )

    monkeypatch.setattr(cli, "_proxy", lambda device: Proxy())
    assert cli.main(["stop", "2"]) == cli.ERROR
    out, err = capsys.readouterr()
    assert (out, err) == ("", "oet: error: Procedure 2 has already ended (FAILED)\n")


def test_replies_are_printed_as_tables_or_raw_json(monkeypatch: pytest.MonkeyPatch) -> None:
    reply = json.dumps([summary(1, "READY")])
    calls = []

    class Proxy:
        def command_inout(self, name: str, argin: str) -> str:
            calls.append((name, argin))
            return reply

    monkeypatch.setattr(cli, "_proxy", lambda device: Proxy())
    out = io.StringIO()
    assert cli.main(["list", "--json"], out=out) == 0
    assert out.getvalue() == reply + "\n"
    out = io.StringIO()
    assert cli.main(["list"], out=out) == 0
    assert out.getvalue().splitlines()[0].split() == ["ID", "STATE", "SCRIPT", "LAST", "CHANGE"]
    out = io.StringIO()
    assert cli.main(["describe", "1"], out=out) == 0
    assert out.getvalue().startswith("Procedure 1: READY\n")
    assert calls == [("Summarise", ""), ("Summarise", ""), ("Summarise", "[1]")]


def test_stop_output() -> None:
    args = cli.parse_args(["stop", "4", "--abort"])
    assert cli.render(args, "[]") == "Stop requested for procedure 4."
    text = cli.render(args, json.dumps([summary(5, "CREATING")]))
    assert text.splitlines()[:2] == ["Stop requested for procedure 4.", "Abort procedure started:"]


def test_a_reply_that_is_not_json_is_an_error() -> None:
    with pytest.raises(cli.CommandError, match="not JSON"):
        cli.render(cli.parse_args(["list"]), "oops")


def test_a_missing_tango_host_is_reported_before_tango_complains(tmp_path: pathlib.Path) -> None:
    # whatever this machine's /etc/tangorc says: the host-wide file is one the test makes
    system_rc = tmp_path / "etc-tangorc"
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    with pytest.raises(cli.CommandError, match="TANGO_HOST is not set"):
        cli.check_tango_host("oet/executor/1", env, system_rc=system_rc)
    system_rc.write_text("# no host here\nORB_PORT=1\n")
    with pytest.raises(cli.CommandError, match="TANGO_HOST is not set"):
        cli.check_tango_host("oet/executor/1", env, system_rc=system_rc)
    # a tangorc naming the host, host-wide or the user's own, is as good as the variable
    system_rc.write_text("# Debian's packages write this\nTANGO_HOST=127.0.0.1:10000\n")
    cli.check_tango_host("oet/executor/1", env, system_rc=system_rc)
    system_rc.unlink()
    (home / ".tangorc").write_text("TANGO_HOST=127.0.0.1:10000\n")
    cli.check_tango_host("oet/executor/1", env, system_rc=system_rc)
    cli.check_tango_host("oet/executor/1", {"TANGO_HOST": "localhost:10000"}, system_rc=system_rc)
    cli.check_tango_host("tango://127.0.0.1:10000/oet/executor/1", {}, system_rc=system_rc)


# -- what a new user tripped over ---------------------------------------------------------------


def test_start_force_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["start", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    force = text[text.index("--force") :]
    assert "QA" not in force.split("--wait")[0]
    assert "as soon as it is" in force and "not READY yet" in force


def test_prepare_waits_for_ready_and_start_for_running() -> None:
    creating = summary(3, "CREATING")
    assert not cli.reached("prepare", creating, summary(3, "LOADING"))
    assert not cli.reached("prepare", creating, summary(3, "INITIALISING"))
    assert not cli.reached("prepare", creating, summary(3, "PREP_ENV"))  # a git environment
    from ska_oso_oet.procedure.states import ProcedureState

    assert {s.name for s in ProcedureState} >= cli.PREPARING  # names the states as they are
    assert cli.reached("prepare", creating, summary(3, "READY"))
    assert cli.reached("prepare", creating, summary(3, "FAILED"))  # an end is an answer too

    ready = summary(4, "READY")
    assert not cli.reached("start", ready, summary(4, "READY"))
    running = summary(4, "RUNNING")
    assert cli.reached("start", ready, running)
    # a quick main: RUNNING then READY again before the client looks: it did run
    history = [["READY", T0], ["RUNNING", T0 + 1], ["READY", T0 + 2]]
    again = summary(4, "READY", history={"process_states": history, "stacktrace": None})
    assert cli.reached("start", ready, again)
    assert cli.reached("start", ready, summary(4, "COMPLETE"))
    args = cli.parse_args(["start", "4"])
    assert args.wait == cli.DEFAULT_WAIT
    assert cli.parse_args(["prepare", "file:///abs/x.py", "--wait", "0"]).wait == 0


def test_every_final_state_ends_the_wait() -> None:
    """UNKNOWN is an end as COMPLETE is: ``start --wait`` does not wait the whole --wait."""
    from ska_oso_oet import cli_output
    from ska_oso_oet.procedure.states import FINAL_STATES

    names = {s.name for s in FINAL_STATES}
    for name in sorted(names):
        for command, reply in (
            ("start", summary(4, "READY")),
            ("prepare", summary(3, "CREATING")),
        ):
            assert cli.reached(command, reply, summary(reply["id"], name)), (command, name)
    assert set(cli.FINAL) == names  # one definition, taken from the state machine
    assert cli_output.FINAL is cli.FINAL


def test_describe_shows_init_only_when_it_was_called() -> None:
    no_init = summary(5, "READY", script_args={"init": {"args": [], "kwargs": {}}})
    assert not any(
        line.strip().startswith("init:") for line in cli.format_details(no_init, UTC).splitlines()
    )
    history = [["CREATING", T0], ["INITIALISING", T0 + 1], ["READY", T0 + 2]]
    called = summary(
        5, "READY", script_args={"init": {"args": [], "kwargs": {}}},
        history={"process_states": history, "stacktrace": None},
    )  # fmt: skip
    assert "  init:        init()" in cli.format_details(called, UTC).splitlines()


def test_listen_prints_the_error_of_a_failed_procedure() -> None:
    trace = (
        'Traceback (most recent call last):\n  File "x.py"\noet_script_x.RuntimeError: on fire\n'
    )
    failed = summary(
        6, "FAILED", history={"process_states": [["FAILED", T0]], "stacktrace": trace}
    )
    line = cli.history_line(failed, ["FAILED", T0], UTC)
    assert line.endswith("FAILED        file:///abs/hello.py  RuntimeError: on fire"), line
    assert "RuntimeError" not in cli.history_line(summary(6, "READY"), ["READY", T0], UTC)


def test_abort_is_the_panic_button() -> None:
    args = cli.parse_args(["abort"])
    assert cli.request_for(args) == ("Abort", "")
    assert cli.render(args, "[]") == "Nothing was running: nothing to abort."
    text = cli.render(args, json.dumps([summary(7, "CREATING"), summary(8, "CREATING")]))
    lines = text.splitlines()
    assert lines[0] == "Stopping; abort procedures started:"
    assert [line.split()[0] for line in lines[2:]] == ["7", "8"]


def test_a_tab_in_script_output_stays_a_tab_and_other_controls_are_escaped() -> None:
    from ska_oso_oet import cli_output

    line = cli_output.format_line({"stream": "stdout", "text": "a\tb\x1b[31m", "time": T0})
    assert line.endswith("a\tb\\x1b[31m")
    assert cli.printable("a\tb\x1b") == "a\\tb\\x1b"  # a table cell keeps no tab
