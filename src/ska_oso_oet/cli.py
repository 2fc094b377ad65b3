"""``oet``: the command line client of the ObservationExecutionTool Tango device.

    oet prepare file:///abs/scripts/hello.py --kwarg subarray_id=1   # alias: create
    oet start 1 [--fn main] [--arg V ...] [--kwarg K=V ...] [--force]
    oet stop 1 [--abort]
    oet abort                    # the panic button: stop all that runs, with the abort script
    oet list
    oet describe 1
    oet listen
    oet scripts                  # the scripts the device may load, their functions and signatures

The device is ``--device`` or ``$OET_DEVICE`` (default ``oet/executor/1``) on ``$TANGO_HOST``.
Tables are for people; ``--json`` prints the JSON the device returned. Argument values are
parsed as JSON when they can be (``3``, ``true``, ``[1, 2]``, ``"3"``), else taken as strings.
On error: one line on stderr starting ``oet: error:``; exit status 2 for a usage error, 1
otherwise.

Everything except :func:`main` and the ``run_*`` functions is pure, for unit tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from ska_oso_oet.procedure.states import FINAL_STATES

DEFAULT_DEVICE = "oet/executor/1"
PREFIX = "oet: error: "
USAGE_ERROR = 2
ERROR = 1
LIST_SCRIPTS_TIMEOUT_MS = 60_000  # instead of Tango's 3 s


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


class CommandError(Exception):
    """The device refused or could not be reached (exit status 1)."""


# -- arguments -> requests ---------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (3, true, null, [1], "x"), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; UsageError when a pair has no name."""
    kwargs: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--kwarg takes NAME=VALUE (a Python name, '='), not {item!r}")
        kwargs[key] = parse_value(value)
    return kwargs


def function_args(args: Sequence[str] | None, kwargs: Sequence[str] | None) -> dict[str, Any]:
    return {"args": [parse_value(a) for a in args or ()], "kwargs": parse_kwargs(kwargs)}


def script_uri(text: str, cwd: pathlib.Path | None = None) -> str:
    """A ``file://`` or ``git://`` URI; a bare path becomes ``file://`` + its absolute path."""
    if text.startswith("git://"):
        if len(text) <= len("git://"):
            raise UsageError("a git:// URI needs the script's path in the repository")
        return text
    if text.startswith("file://"):
        if not text.startswith("file:///"):
            raise UsageError(f"file:// URIs need an absolute path, e.g. file:///abs/x.py: {text}")
        return text
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise UsageError(f"unsupported script URI scheme {scheme!r}: use file:// or git://")
    path = pathlib.Path(text)
    if not path.is_absolute():
        path = (cwd or pathlib.Path.cwd()) / path
    return f"file://{os.path.normpath(path)}"


def prepare_request(
    uri: str,
    args: Sequence[str] | None = None,
    kwargs: Sequence[str] | None = None,
    *,
    git_repo: str | None = None,
    git_branch: str | None = None,
    git_commit: str | None = None,
    create_env: bool = False,
    cwd: pathlib.Path | None = None,
) -> dict[str, Any]:
    """The argin of ``Prepare``."""
    uri = script_uri(uri, cwd)
    script: dict[str, Any]
    if uri.startswith("git://"):
        git_args: dict[str, Any] = {"git_branch": git_branch, "git_commit": git_commit}
        if git_repo is not None:
            git_args = {"git_repo": git_repo, **git_args}
        script = {
            "script_type": "git",
            "script_uri": uri,
            "git_args": git_args,
            "create_env": create_env,
        }
    else:
        given = [
            opt
            for opt, value in (
                ("--git-repo", git_repo),
                ("--git-branch", git_branch),
                ("--git-commit", git_commit),
                ("--create-env", create_env or None),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to git:// scripts")
        script = {"script_type": "filesystem", "script_uri": uri}
    return {"script": script, "script_args": {"init": function_args(args, kwargs)}}


def start_request(
    pid: int,
    fn_name: str = "main",
    args: Sequence[str] | None = None,
    kwargs: Sequence[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The argin of ``Start``."""
    return {
        "id": pid,
        "fn_name": fn_name,
        "run_args": function_args(args, kwargs),
        "force_start": force,
    }


def stop_request(pid: int, abort: bool = False) -> dict[str, Any]:
    """The argin of ``Stop``."""
    return {"id": pid, "run_abort": abort}


# -- output ------------------------------------------------------------------------------------


def format_time(timestamp: float | None, tz: datetime.tzinfo | None = None) -> str:
    """Local time to the millisecond, e.g. ``2025-11-25 02:30:00.123``."""
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def last_change(summary: dict[str, Any]) -> float | None:
    states = summary.get("history", {}).get("process_states") or []
    return states[-1][1] if states else None


def script_label(summary: dict[str, Any]) -> str:
    script = summary.get("script") or {}
    uri = str(script.get("script_uri", "?"))
    git = script.get("git_args") or {}
    extras = [str(git[k]) for k in ("git_repo", "git_branch", "git_commit") if git.get(k)]
    return f"{uri} ({', '.join(extras)})" if extras else uri


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def format_summaries(
    summaries: Sequence[dict[str, Any]], tz: datetime.tzinfo | None = None
) -> str:
    """The table of ``oet list``: ID, STATE, SCRIPT, LAST CHANGE."""
    if not summaries:
        return "No procedures."
    rows = [
        (s.get("id"), s.get("state"), script_label(s), format_time(last_change(s), tz))
        for s in sorted(summaries, key=lambda s: s.get("id", 0))
    ]
    return table(("ID", "STATE", "SCRIPT", "LAST CHANGE"), rows)


def format_call(args: dict[str, Any] | None) -> str:
    """``{"args": [1], "kwargs": {"a": "x"}}`` -> ``1, a='x'`` (Python call syntax)."""
    args = args or {}
    parts = [repr(a) for a in args.get("args") or []]
    parts += [f"{k}={v!r}" for k, v in (args.get("kwargs") or {}).items()]
    return ", ".join(parts)


def format_details(summary: dict[str, Any], tz: datetime.tzinfo | None = None) -> str:
    """The text of ``oet describe``: the summary, every history entry, the stacktrace."""
    script = summary.get("script") or {}
    lines = [
        f"Procedure {summary.get('id')}: {summary.get('state')}",
        f"  script:      {script.get('script_uri')} ({script.get('script_type')})",
    ]
    git = script.get("git_args")
    if git:
        lines.append(
            "  git:         "
            + ", ".join(f"{k.removeprefix('git_')}={v}" for k, v in git.items() if v)
        )
        lines.append(f"  create_env:  {script.get('create_env', False)}")
    history_states = [e[0] for e in (summary.get("history") or {}).get("process_states") or []]
    for fn, call in (summary.get("script_args") or {}).items():
        if fn == "init" and "INITIALISING" not in history_states and not format_call(call):
            continue  # the script has no init (or it has not run): nothing was called
        lines.append(f"  {fn + ':':<12} {fn}({format_call(call)})")
    if summary.get("uri"):
        lines.append(f"  uri:         {summary['uri']}")
    if summary.get("pause_pending"):
        lines.append("  pause:       pending (at the script's next checkpoint)")
    progress = summary.get("progress")
    if isinstance(progress, dict):
        fraction = progress.get("fraction")
        done = f"{fraction:.0%}" if isinstance(fraction, int | float) else "-"
        lines.append(f"  progress:    {done} {printable(progress.get('message') or '')}".rstrip())
    if summary.get("result") is not None:
        lines.append(f"  result:      {printable(json.dumps(summary['result']))[:500]}")
    history = (summary.get("history") or {}).get("process_states") or []
    lines.append("")
    lines.append(table(("TIME", "STATE"), [(format_time(t, tz), s) for s, t in history]))
    stacktrace = (summary.get("history") or {}).get("stacktrace")
    if stacktrace:
        lines.append("")
        lines.append("Stacktrace:")
        lines.append(str(stacktrace).rstrip())
    return "\n".join(lines)


def history_line(
    summary: dict[str, Any], entry: Sequence[Any], tz: datetime.tzinfo | None = None
) -> str:
    """One line of ``oet listen``: time, id, state, script; a FAILED one adds its error."""
    state, timestamp = str(entry[0]), entry[1]
    when = format_time(timestamp, tz)
    line = f"{when}  {summary.get('id')!s:>4}  {state:<12}  {script_label(summary)}"
    if state == "FAILED":
        line += f"  {failure_reason(summary)}"
    return line


def failure_reason(summary: dict[str, Any]) -> str:
    """The last line of a FAILED procedure's stacktrace: ``ExceptionType: message``, as the
    device's ``lastFailure`` has it."""
    from ska_oso_oet.procedure.errors import error_line

    stacktrace = (summary.get("history") or {}).get("stacktrace")
    return printable(error_line(str(stacktrace or "")) or "(no error was reported)")


class HistoryTracker:
    """Turns successive ``procedureSummaries`` values into the history entries not yet seen."""

    def __init__(self) -> None:
        self.seen: dict[Any, int] = {}

    def baseline(self, summaries: Sequence[dict[str, Any]]) -> None:
        """Remember what exists already, so that only later changes are reported."""
        for s in summaries:
            self.seen[s.get("id")] = len((s.get("history") or {}).get("process_states") or [])

    def new_entries(
        self, summaries: Sequence[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], list[Any]]]:
        new: list[tuple[dict[str, Any], list[Any]]] = []
        for s in summaries:
            states = (s.get("history") or {}).get("process_states") or []
            seen = self.seen.get(s.get("id"), 0)
            new.extend((s, entry) for entry in states[seen:])
            self.seen[s.get("id")] = len(states)
        return new


def devfailed_message(errors: Sequence[Any]) -> str:
    """One line from a DevFailed's error stack (objects with ``reason`` and ``desc``).

    The first error is the cause (e.g. the device's own refusal); when it is only a transport
    failure (CORBA), the last one says what the client was trying to reach.
    """
    if not errors:
        return "unknown Tango error"
    first = errors[0]
    chosen = first
    transport = ("API_Corba", "TRANSIENT", "API_ServerNotRunning")
    if len(errors) > 1 and str(first.reason).startswith(transport):
        chosen = errors[-1]
    text = " ".join(str(chosen.desc).split())
    reason = str(chosen.reason)
    if reason == "API_CantConnectToDatabase":
        text += f" (TANGO_HOST={os.environ.get('TANGO_HOST', 'unset')})"
    elif reason in ("API_DeviceNotExported", "API_CantConnectToDevice", "API_DeviceNotDefined"):
        text += " (is its device server running? `make run` starts one)"
    return text


def error_line(message: str) -> str:
    """The one line printed on stderr for any error."""
    return PREFIX + " ".join(str(message).split())


# -- argument parsing --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and a UsageError, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a procedure ID is a number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a procedure ID is not negative: {value}")
    return value


#: Seconds ``prepare`` and ``start`` wait by default for READY and RUNNING.
DEFAULT_WAIT = 60.0
#: States a procedure passes through before it is READY.
PREPARING = frozenset({"CREATING", "IDLE", "LOADING", "PREP_ENV", "INITIALISING"})
#: States after which nothing else happens (UNKNOWN too), by name as the JSON has them.
FINAL = frozenset(state.name for state in FINAL_STATES)


def add_wait_args(p: argparse.ArgumentParser, state: str) -> None:
    p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"wait at most this long for {state} (or an end) before printing "
        f"(default {DEFAULT_WAIT:g}; 0: print the device's reply at once)",
    )


def _runs(summary: dict[str, Any]) -> int:
    history = (summary.get("history") or {}).get("process_states") or []
    return sum(1 for entry in history if entry and entry[0] == "RUNNING")


def reached(command: str, reply: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether ``prepare``/``start`` has seen what it waits for: READY (or an end) after
    Prepare; after Start, the procedure RUNNING since the reply (or an end)."""
    state = str(now.get("state"))
    if state in FINAL:
        return True
    if command == "start":
        return _runs(now) > _runs(reply) or state == "PAUSED"
    return state not in PREPARING


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--device",
        default=argparse.SUPPRESS,
        help=f"device name (default $OET_DEVICE or {DEFAULT_DEVICE})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the JSON the device returned instead of tables",
    )
    parser = _Parser(
        prog="oet",
        parents=[common],
        description="Command line client of the OET Tango device (TANGO_HOST, OET_DEVICE).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add_call_args(p: argparse.ArgumentParser, fn: str) -> None:
        p.add_argument("--arg", action="append", metavar="V", help=f"positional argument of {fn}")
        p.add_argument("--kwarg", action="append", metavar="K=V", help=f"keyword argument of {fn}")

    p = sub.add_parser(
        "prepare",
        aliases=["create"],
        parents=[common],
        help="load a script into a new procedure (runs its init)",
        description="Load a script into a new procedure (runs its init). `oet scripts` lists "
        "the scripts the device may load, with their functions and signatures.",
    )
    p.add_argument("uri", help="file:///abs/script.py, git://path/in/repo.py, or a path")
    add_call_args(p, "init")
    p.add_argument("--git-repo", help="repository URL (git:// scripts)")
    p.add_argument("--git-branch", help="branch (git:// scripts)")
    p.add_argument("--git-commit", help="commit (git:// scripts)")
    p.add_argument(
        "--create-env", action="store_true", help="install the repository's environment"
    )
    add_wait_args(p, "READY")

    p = sub.add_parser("start", parents=[common], help="run a function of a READY procedure")
    p.add_argument("id", type=_positive_id)
    p.add_argument("--fn", default="main", help="function to run (default main)")
    add_call_args(p, "the function")
    p.add_argument(
        "--force",
        action="store_true",
        help="if the procedure is not READY yet (still loading or in init), start it as soon "
        "as it is, instead of refusing",
    )
    add_wait_args(p, "RUNNING")

    p = sub.add_parser("stop", parents=[common], help="stop a procedure")
    p.add_argument("id", type=_positive_id)
    p.add_argument("--abort", action="store_true", help="then run the abort script")

    p = sub.add_parser(
        "pause",
        parents=[common],
        help="pause a RUNNING procedure at its script's next checkpoint()",
        description="Pause a RUNNING procedure: it becomes PAUSED when its script next calls "
        "ska_oso_oet.scripting.checkpoint() (a script that never calls it runs on).",
    )
    p.add_argument("id", type=_positive_id)
    p = sub.add_parser(
        "resume", parents=[common], help="resume a PAUSED procedure (or cancel a pending pause)"
    )
    p.add_argument("id", type=_positive_id)

    sub.add_parser(
        "abort",
        parents=[common],
        help="the panic button: stop every RUNNING or PAUSED procedure, with the abort script",
        description="Stop every RUNNING or PAUSED procedure and run the abort script for each "
        "(as `oet stop ID --abort` for each of them).",
    )
    sub.add_parser("list", parents=[common], help="list the procedures")
    p = sub.add_parser("describe", parents=[common], help="one procedure in full")
    p.add_argument("id", type=_positive_id)
    p = sub.add_parser("listen", parents=[common], help="print state changes until Ctrl-C")
    p.add_argument(
        "--messages",
        action="store_true",
        help="also the messages scripts send (pypubsub) and the lines they write",
    )
    p = sub.add_parser(
        "logs",
        parents=[common],
        help="what a procedure's script wrote (stdout, stderr, logging), as kept by the device",
    )
    p.add_argument("id", type=_positive_id)
    p.add_argument(
        "-f", "--follow", action="store_true", help="then print new lines until it ends"
    )
    sub.add_parser(
        "scripts",
        parents=[common],
        help="the scripts under the device's ScriptRoots, with their functions (read, not run)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "device"):
        args.device = os.environ.get("OET_DEVICE") or DEFAULT_DEVICE
    if not hasattr(args, "json"):
        args.json = False
    return args


def request_for(args: argparse.Namespace) -> tuple[str, str]:
    """(command name, argin JSON) for a one-shot command."""
    if args.command in ("prepare", "create"):
        return "Prepare", json.dumps(
            prepare_request(
                args.uri,
                args.arg,
                args.kwarg,
                git_repo=args.git_repo,
                git_branch=args.git_branch,
                git_commit=args.git_commit,
                create_env=args.create_env,
            )
        )
    if args.command == "start":
        return "Start", json.dumps(
            start_request(args.id, args.fn, args.arg, args.kwarg, args.force)
        )
    if args.command == "stop":
        return "Stop", json.dumps(stop_request(args.id, args.abort))
    if args.command in ("pause", "resume"):
        return args.command.capitalize(), json.dumps({"id": args.id})
    if args.command == "abort":
        return "Abort", ""  # a DevVoid command: the argin is not sent
    if args.command == "list":
        return "Summarise", ""
    if args.command == "describe":
        return "Summarise", json.dumps([args.id])
    if args.command == "scripts":
        return "ListScripts", ""
    raise UsageError(f"unknown command {args.command!r}")


def printable(value: Any, keep: str = "") -> str:
    """``value`` as text with no control characters (a file name or a docstring cannot move
    the cursor or recolour the terminal): each is shown escaped, e.g. ``\\x1b``, except
    those in ``keep`` (``"\\t"`` for a script's output)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return printable(lines[0]) if lines else ""


def _binding_note(fn: dict[str, Any]) -> str:
    """``[init binds it: partial of _main]`` for a callable the source binds, else ``""``."""
    kind, wraps = fn.get("kind"), fn.get("wraps")
    where = "init binds it" if fn.get("bound_in") == "init" else ""
    what = {
        "partial": f"partial of {wraps}",
        "instance": f"instance of {wraps}",
        "method": f"method {wraps}",
        "class": "a class: calling it makes an instance",
        "imported": "imported; __all__ lists it",
        "unknown": "known only when it runs",
    }.get(str(kind), "")
    text = ": ".join(part for part in (where, what) if part)
    return f"  [{printable(text)}]" if text else ""


def format_catalogue(entries: list[dict[str, Any]]) -> str:
    """The catalogue: each script's URI and first doc line, then its functions."""
    if not entries:
        return "No scripts under the device's ScriptRoots."
    lines: list[str] = []
    for entry in entries:
        uri = printable(entry.get("script_uri"))
        lines.append(uri)
        if entry.get("error"):
            lead = "" if uri.endswith("/") else "cannot be read: "  # a folder: a bound's note
            lines.append(f"    {lead}{printable(entry['error'])}")
            continue
        doc = _first_line(entry.get("doc"))
        if doc:
            lines.append(f"    {doc}")
        for fn in entry.get("functions") or []:
            text = f"    {'async ' if fn.get('async') else ''}{printable(fn.get('name'))}"
            text += printable(fn.get("signature")) + _binding_note(fn)
            first = _first_line(fn.get("doc"))
            lines.append(f"{text}  - {first}" if first else text)
    return "\n".join(lines)


def decode(reply: str) -> Any:
    try:
        return json.loads(reply)
    except ValueError as exc:
        raise CommandError(f"the device returned something that is not JSON: {reply!r}") from exc


def render(args: argparse.Namespace, reply: str) -> str:
    """What a one-shot command prints for the device's reply."""
    if args.json:
        return reply
    value = decode(reply)
    if args.command in ("prepare", "create", "start"):
        return format_summaries([value])
    if args.command == "abort":
        if not value:
            return "Nothing was running: nothing to abort."
        return "Stopping; abort procedures started:\n" + format_summaries(value)
    if args.command == "stop":
        text = f"Stop requested for procedure {args.id}."
        if value:
            text += "\nAbort procedure started:\n" + format_summaries(value)
        return text
    if args.command in ("pause", "resume"):
        text = format_summaries([value])
        if value.get("pause_pending"):
            text += "\nThe pause is pending: it takes effect at the script's next checkpoint()."
        return text
    if args.command == "list":
        return format_summaries(value)
    if args.command == "scripts":
        return format_catalogue(value)
    if args.command == "describe":
        matching = [s for s in value if s.get("id") == args.id]
        if not matching:
            raise CommandError(f"no procedure with ID {args.id}")
        return format_details(matching[0])
    return reply


# -- talking to the device ---------------------------------------------------------------------


#: The host-wide file in which the Tango library looks for TANGO_HOST when the environment has
#: none (after ``~/.tangorc``); Debian's Tango packages write it.
SYSTEM_TANGORC = pathlib.Path("/etc/tangorc")


def _names_tango_host(rc_file: pathlib.Path) -> bool:
    try:
        lines = rc_file.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return any(line.strip().startswith("TANGO_HOST") and "=" in line for line in lines)


def check_tango_host(
    device: str, env: dict[str, str] | None = None, system_rc: pathlib.Path = SYSTEM_TANGORC
) -> None:
    """CommandError when the device can't be located: no TANGO_HOST in the environment, nor in
    ``~/.tangorc`` or ``system_rc`` (where the Tango library looks next).

    (Otherwise the Tango library prints its own complaint as well as raising.)
    """
    env = dict(os.environ) if env is None else env
    if device.startswith("tango://") or env.get("TANGO_HOST"):
        return
    rc_files = [system_rc]
    if env.get("HOME"):
        rc_files.append(pathlib.Path(env["HOME"]) / ".tangorc")
    if not any(_names_tango_host(f) for f in rc_files):
        raise CommandError(
            "TANGO_HOST is not set: set it to the Tango database's host:port, "
            "e.g. export TANGO_HOST=localhost:10000"
        )


def _proxy(device: str) -> Any:
    import tango

    check_tango_host(device)
    return tango.DeviceProxy(device)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    name, argin = request_for(args)
    proxy = _proxy(args.device)
    if name == "ListScripts":  # a large tree read for the first time takes seconds
        proxy.set_timeout_millis(LIST_SCRIPTS_TIMEOUT_MS)
    if name in ("Prepare", "Start") and getattr(args, "wait", 0) > 0:
        reply = _command_and_wait(args, proxy, name, argin)
    elif name == "Abort":
        reply = proxy.command_inout(name)
    else:
        reply = proxy.command_inout(name, argin)
    print(render(args, reply), file=out, flush=True)
    return 0


def _command_and_wait(args: argparse.Namespace, proxy: Any, name: str, argin: str) -> str:
    """Send Prepare or Start, then wait (on procedureSummaries events, subscribed first so that
    nothing is missed) until the procedure is READY or RUNNING; its summary then, as JSON."""
    import tango

    cond = threading.Condition()
    latest: dict[Any, dict[str, Any]] = {}

    def callback(event: Any) -> None:
        if event.err:
            return
        try:
            summaries = json.loads(event.attr_value.value or "[]")
        except ValueError:
            return
        with cond:
            for summary in summaries:
                if isinstance(summary, dict):
                    latest[summary.get("id")] = summary
            cond.notify_all()

    event_id = proxy.subscribe_event("procedureSummaries", tango.EventType.CHANGE_EVENT, callback)
    try:
        reply_text = proxy.command_inout(name, argin)
        reply = decode(reply_text)
        if not isinstance(reply, dict) or "id" not in reply:
            return str(reply_text)
        pid = reply["id"]

        def done() -> bool:
            now = latest.get(pid)
            return now is not None and reached(args.command, reply, now)

        with cond:
            if not cond.wait_for(done, args.wait):
                now = latest.get(pid, reply)
                waited = "RUNNING" if args.command == "start" else "READY"
                print(
                    f"oet: note: procedure {pid} is {now.get('state')}, not yet {waited}, after "
                    f"{args.wait:g} s; `oet listen` follows it",
                    file=sys.stderr,
                    flush=True,
                )
                return json.dumps(now)
            return json.dumps(latest[pid])
    finally:
        try:
            proxy.unsubscribe_event(event_id)
        except tango.DevFailed:
            pass


def line_writer(out: TextIO, stop: threading.Event) -> Callable[[str], None]:
    """Print a line to ``out`` at once; a closed pipe (``oet listen | head``) sets ``stop``."""

    def write(text: str) -> None:
        try:
            print(text, file=out, flush=True)
        except (BrokenPipeError, ValueError):
            stop.set()

    return write


def run_listen(args: argparse.Namespace, out: TextIO, stop: threading.Event | None = None) -> int:
    """Print each new history entry of every procedure until Ctrl-C (or ``stop`` is set)."""
    import tango

    stop = stop or threading.Event()
    tracker = HistoryTracker()
    lock = threading.Lock()
    first = [True]
    write = line_writer(out, stop)

    def callback(event: Any) -> None:
        if event.err:
            print(f"oet: warning: {devfailed_message(event.errors)}", file=sys.stderr, flush=True)
            return
        raw = event.attr_value.value
        with lock:
            if args.json:
                write(raw)
                return
            try:
                summaries = json.loads(raw or "[]")
            except ValueError:
                write(f"oet: warning: procedureSummaries is not JSON: {raw!r}")
                return
            if first[0]:  # the value at subscription time: what happened before we listened
                first[0] = False
                tracker.baseline(summaries)
                return
            for summary, entry in tracker.new_entries(summaries):
                write(history_line(summary, entry))

    if threading.current_thread() is threading.main_thread():
        # also when started in the background of a shell, which ignores SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    proxy = _proxy(args.device)
    event_id = proxy.subscribe_event("procedureSummaries", tango.EventType.CHANGE_EVENT, callback)
    event_ids = [event_id]
    if getattr(args, "messages", False):
        from ska_oso_oet import cli_output

        event_ids += cli_output.subscribe_messages(proxy, write, args.json)
    if not args.json:
        write(f"Listening to {args.device} (Ctrl-C to stop)")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for event_id in event_ids:
            try:
                proxy.unsubscribe_event(event_id)
            except tango.DevFailed:
                pass
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = parse_args(argv)
        if args.command == "listen":
            return run_listen(args, out)
        if args.command == "logs":
            from ska_oso_oet import cli_output

            return cli_output.run_logs(
                _proxy(args.device), args.id, args.follow, out, args.json, threading.Event()
            )
        return run_command(args, out)
    except UsageError as exc:
        print(error_line(str(exc)), file=sys.stderr, flush=True)
        return USAGE_ERROR
    except CommandError as exc:
        print(error_line(str(exc)), file=sys.stderr, flush=True)
        return ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # DevFailed, and anything else: one line, not a traceback
        errors = getattr(exc, "args", ())
        if errors and all(hasattr(e, "desc") for e in errors):
            message = devfailed_message(errors)
        else:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        print(error_line(message), file=sys.stderr, flush=True)
        return ERROR


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
