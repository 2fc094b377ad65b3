"""The `oet` commands for what scripts write and say: ``oet logs ID [--follow]`` and the
``--messages`` part of ``oet listen``.

``oet logs ID`` pages through ``GetOutput`` from the first kept line. With ``--follow`` it
subscribes to ``procedureOutput`` (and ``procedureSummaries``, to see the end) *before* it
reads what is stored, then prints each event's lines with a ``seq`` it has not printed yet;
a gap in the events (an event's ``skipped`` lines) is filled from ``GetOutput``. So nothing
is missed and nothing printed twice. It ends when the procedure has ended and every line is
printed, or on Ctrl-C.

Every text that came from a script is printed with its control characters escaped, so that
a script cannot move the cursor or recolour the operator's terminal.
"""

from __future__ import annotations

import datetime
import json
import queue
import threading
from collections.abc import Callable
from typing import Any, TextIO

from ska_oso_oet.cli import FINAL, line_writer, printable

#: Most GetOutput pages read at once (a bound on a reply loop that never ends).
MAX_PAGES = 100_000


def _printable(text: str) -> str:
    return printable(text, keep="\t")  # a tab in a script's output stays a tab


def _clock(timestamp: Any) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(timestamp))
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--.---"
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_line(line: dict[str, Any], pid: int | None = None) -> str:
    """``12:00:01.123 stdout hello`` (``log INFO`` for a log record); ``[3]`` before it when
    ``pid`` is given. Each line of a multi-line text is shown indented."""
    stream = str(line.get("stream", "?"))
    tag = f"{stream} {line.get('level', '')}".strip() if stream == "log" else stream
    head = f"{_clock(line.get('time'))} {tag:<6} "
    if pid is not None:
        head = f"[{pid}] " + head
    parts = str(line.get("text", "")).split("\n")
    text = "\n".join(
        _printable(p) if i == 0 else " " * len(head) + _printable(p) for i, p in enumerate(parts)
    )
    return head + text


def format_message(message: dict[str, Any]) -> str:
    """``[3] 12:00:01.123 message user.script.announce (from src): {"msg": "hi"}``."""
    data = json.dumps(message.get("data"), default=repr)
    src = message.get("msg_src")
    source = f" (from {_printable(str(src))})" if src is not None else ""
    topic = _printable(str(message.get("topic")))
    return f"[{message.get('id')}] {_clock(message.get('time'))} message {topic}{source}: " + (
        _printable(data)
    )


class Printer:
    """Prints lines of one procedure once each, in seq order, noting lines no longer kept."""

    def __init__(self, pid: int, write: Callable[[str], None], as_json: bool) -> None:
        self.pid = pid
        self.write = write
        self.as_json = as_json
        self.next = 0

    def lines(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            seq = line.get("seq")
            if not isinstance(seq, int) or seq < self.next:
                continue  # printed already
            if seq > self.next and not self.as_json:
                self.write(f"[{seq - self.next} lines of procedure {self.pid} are no longer kept]")
            self.write(json.dumps(line) if self.as_json else format_line(line))
            self.next = seq + 1

    def fetch(self, proxy: Any, upto: int | None = None) -> None:
        """Print the stored lines from ``next`` on (up to ``upto``, exclusive, if given)."""
        for _ in range(MAX_PAGES):
            if upto is not None and self.next >= upto:
                return
            reply = json.loads(
                proxy.command_inout("GetOutput", json.dumps({"id": self.pid, "since": self.next}))
            )
            lines = reply.get("lines") or []
            if upto is not None:
                lines = [line for line in lines if line.get("seq", 0) < upto]
            if not lines:
                return
            self.lines(lines)


def run_logs(
    proxy: Any, pid: int, follow: bool, out: TextIO, as_json: bool, stop: threading.Event
) -> int:
    """Print procedure ``pid``'s kept output; with ``follow``, then its new lines until it
    ends (or ``stop`` is set)."""
    import tango

    printer = Printer(pid, line_writer(out, stop), as_json)
    if not follow:
        printer.fetch(proxy)
        return 0
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def on_output(event: Any) -> None:
        if not event.err:
            events.put(("output", event.attr_value.value))

    def on_summaries(event: Any) -> None:
        if not event.err:
            events.put(("summaries", event.attr_value.value))

    ids = []
    try:
        ids.append(
            proxy.subscribe_event("procedureOutput", tango.EventType.CHANGE_EVENT, on_output)
        )
        ids.append(
            proxy.subscribe_event("procedureSummaries", tango.EventType.CHANGE_EVENT, on_summaries)
        )
        printer.fetch(proxy)  # what is stored; the events cover what comes after
        ended = False
        while not stop.is_set():
            try:
                kind, raw = events.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                doc = json.loads(raw or "null")
            except ValueError:
                continue
            if kind == "output":
                if not isinstance(doc, dict) or doc.get("id") != pid:
                    continue
                lines = [x for x in doc.get("lines") or [] if isinstance(x, dict)]
                if (
                    lines
                    and isinstance(lines[0].get("seq"), int)
                    and lines[0]["seq"] > printer.next
                ):
                    printer.fetch(proxy, upto=lines[0]["seq"])  # the lines the event skipped
                printer.lines(lines)
            elif isinstance(doc, list):
                mine = [s for s in doc if isinstance(s, dict) and s.get("id") == pid]
                if mine and mine[0].get("state") in FINAL:
                    ended = True
                elif not mine:
                    ended = True  # no longer held: nothing more will come
            if ended:
                printer.fetch(proxy)  # every line is stored before the final state is shown
                return 0
    except KeyboardInterrupt:
        pass
    finally:
        for event_id in ids:
            try:
                proxy.unsubscribe_event(event_id)
            except tango.DevFailed:
                pass
    return 0


def subscribe_messages(proxy: Any, write: Callable[[str], None], as_json: bool) -> list[int]:
    """For ``oet listen --messages``: print every script message and output line from now on;
    the event IDs to unsubscribe."""
    import tango

    lock = threading.Lock()

    def show(name: str, doc: dict[str, Any]) -> None:
        if name == "procedureMessages":
            write(format_message(doc))
            return
        for line in doc.get("lines") or []:
            if isinstance(line, dict):
                write(format_line(line, doc.get("id")))
        if doc.get("skipped"):
            write(
                f"[{doc.get('id')}] ({doc['skipped']} lines not shown: "
                f"`oet logs {doc.get('id')}` has them)"
            )

    def callback_for(name: str) -> Callable[[Any], None]:
        first = [True]

        def callback(event: Any) -> None:
            if event.err:
                return
            raw = event.attr_value.value
            with lock:
                if first[0]:  # the value at subscription time: from before we listened
                    first[0] = False
                    return
                if as_json:
                    write(raw)
                    return
                try:
                    doc = json.loads(raw or "null")
                except ValueError:
                    return
                if isinstance(doc, dict):
                    show(name, doc)

        return callback

    return [
        proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, callback_for(name))
        for name in ("procedureMessages", "procedureOutput")
    ]
