"""What scripts write and say: captured, kept on disk (bounded) and handed to every client.

The worker's side. The fork server dup2s one pipe onto each worker's fd 1 and another onto
its fd 2 before the worker runs (see :mod:`.launcher`), so that ``print``, C extensions,
``os.system`` and every process the script starts write into them; a third pipe carries the
script's :mod:`logging` records, one JSON object a line (:func:`capture_logging`). The
server holds the read ends, non-blocking: the supervisor reads whatever is there when its
selector says so and hands the bytes to :class:`OutputHub`. It never waits for a worker, and
a worker waits only while the pipe is full (the supervisor reads as fast as it can; clients
are never in that path).

The server's side, :class:`OutputHub`:

- splits each stream into lines (a partial line waits for its end, at most
  :data:`PARTIAL_WAIT` seconds; a line over :data:`MAX_LINE` bytes is cut, with a note;
  bytes that are not UTF-8 are replaced), numbers them from 0 per procedure (``seq``) and
  stamps each with its time and stream (``stdout``, ``stderr``, ``log`` with ``level``);
- keeps each procedure's lines on disk, in ``<data dir>/output/<id>.<n>.jsonl`` segments: at
  most ``limit`` bytes in all, the oldest segment deleted first (its lines are counted in
  ``dropped``), read back by :meth:`OutputHub.get_output` a page at a time;
- batches the lines for events: a procedure's lines go out at once when it had no batch in
  the last :data:`BATCH_INTERVAL` seconds, else with the next batch that interval later; a
  batch carries at most :data:`MAX_EVENT_LINES` lines (the newest) and says how many it left
  out (``skipped``: they are on disk, for ``GetOutput``); lines reach disk before their event;
- passes on every pub/sub message a script sends (not the OET's own topics) as a
  :class:`ScriptMessage`, after the output the script wrote before it.

This module is imported by every worker, so it stays light: standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import termios
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

LOGGER = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr", "log")
#: Longest line kept (bytes of UTF-8); the rest of a longer line is left out, with a note.
MAX_LINE = 16 * 1024
#: Seconds a partial line (no newline yet) waits for its end before it is shown as a line.
PARTIAL_WAIT = 0.5
#: Seconds between two batches of one procedure's lines (the first goes out at once).
BATCH_INTERVAL = 0.05
#: Most lines in one event; a batch with more carries the newest and counts the rest.
MAX_EVENT_LINES = 5000
#: Most bytes (JSON) in one event.
MAX_EVENT_BYTES = 640 * 1024
#: Most lines and bytes in one GetOutput reply.
MAX_PAGE_LINES = 2000
MAX_PAGE_BYTES = 512 * 1024
#: Bytes of lines not yet written to disk held per procedure; older ones beyond are dropped.
MAX_PENDING_BYTES = 8 * 1024 * 1024
#: Script messages passed on per procedure and second (more are dropped and counted).
MAX_MESSAGES_PER_S = 2000
#: Most bytes of JSON of one script message's data in an event (more: cut, with a note).
MAX_MESSAGE_BYTES = 256 * 1024
#: Topics of the OET itself, never passed on as script messages.
OWN_TOPIC_PREFIXES = ("procedure.", "operator.", "oet.")
#: The event-stream topic of an output batch.
OUTPUT_TOPIC = "procedure.output"
#: Bytes read from one pipe at a time.
READ_SIZE = 64 * 1024
#: Most bytes per second read from one worker's pipes (beyond, the script waits in write).
MAX_READ_RATE = 4 * 1024 * 1024
RATE_WINDOW = 0.05
#: Longest line of the log pipe: a record of MAX_LINE characters, JSON-escaped (at most 6
#: bytes a character, for control characters) as UTF-8.
_MAX_LOG_RECORD = 6 * MAX_LINE + 4096


# -- the worker's side -----------------------------------------------------------------------


class _LogCapture:
    """Writes every logging record of the worker (and of processes it forks) to ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            try:
                text = record.getMessage()
            except Exception:
                text = f"{record.msg!r} % {record.args!r}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            elif record.exc_text:
                text += "\n" + record.exc_text
            if record.stack_info:
                text += "\n" + record.stack_info
            if len(text) > MAX_LINE:
                text = text[:MAX_LINE] + f" [cut: the record had {len(text)} characters]"
            doc = {
                "time": record.created,
                "level": str(record.levelname)[:20],
                "logger": str(record.name)[:200],
                "text": text,
            }
            encoded = json.dumps(doc, default=repr, ensure_ascii=False) + "\n"
            data = encoded.encode("utf-8", "replace")
            flush_and_fence(("stdout", "stderr"))
            with self._lock:
                view = memoryview(data)
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
        except (OSError, ValueError, TypeError, RecursionError):
            pass  # the server has gone, or the record cannot be written: never the script's
        finally:
            self._local.busy = False


#: The worker's own copies of the write ends of its pipes (by stream), for :func:`fence`.
_fence_fds: dict[str, int] = {}
#: Longest a worker waits in :func:`fence` for the server to read a pipe (s).
FENCE_TIMEOUT = 0.05


def _unread(fd: int) -> int:
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def fence(streams: tuple[str, ...] = STREAMS) -> None:
    """In a worker: wait (at most FENCE_TIMEOUT) until the server has read what the pipes of
    ``streams`` hold, so that what is written next, to another pipe or the channel, reaches
    the server after it: the order in which a script writes to several streams is kept."""
    fds = [fd for name, fd in _fence_fds.items() if name in streams]
    deadline = None
    delay = 0.0001
    while any(_unread(fd) for fd in fds):
        now = time.monotonic()
        if deadline is None:
            deadline = now + FENCE_TIMEOUT
        elif now >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


def flush_and_fence(streams: tuple[str, ...] = STREAMS) -> None:
    """In a worker: flush sys.stdout and sys.stderr, then :func:`fence` ``streams``, so that
    what was written before reaches the server before what comes next."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    fence(streams)


class _FencedText(io.TextIOWrapper):
    """sys.stdout or sys.stderr of a worker: a write first lets the server read what the
    other stream wrote before it."""

    other: str = ""

    def write(self, text: str) -> int:
        partner = sys.stderr if self.other == "stderr" else sys.stdout
        if partner is not self and partner is not None:
            with contextlib.suppress(Exception):
                partner.flush()
        fence((self.other,))
        return super().write(text)


def _fenced(stream: Any, fd: int, other: str) -> Any:
    """A new text stream on ``fd`` (a pipe now, whatever the old stream's file was)."""
    try:
        stream.flush()
        raw = io.FileIO(fd, "w", closefd=False)
        wrapped = _FencedText(
            io.BufferedWriter(raw),
            encoding=getattr(stream, "encoding", None) or "utf-8",
            errors=getattr(stream, "errors", None) or "backslashreplace",
            line_buffering=True,
        )
    except (AttributeError, ValueError, OSError):
        return stream
    wrapped.other = other
    return wrapped


def capture(log_fd: int) -> None:
    """In a worker whose fd 1 and 2 are the server's pipes: keep the order of what it writes
    to them, and send its logging records to ``log_fd``."""
    with contextlib.suppress(OSError):
        _fence_fds["stdout"] = os.dup(1)
        _fence_fds["stderr"] = os.dup(2)
    _fence_fds["log"] = log_fd
    sys.stdout = _fenced(sys.stdout, 1, "stderr")
    sys.stderr = _fenced(sys.stderr, 2, "stdout")
    sys.addaudithook(_before_a_process)
    capture_logging(log_fd)


#: Audit events of a process about to start: what was written before goes first.
_PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.spawn"}
)


def _before_a_process(event: str, args: Any) -> None:
    if event in _PROCESS_EVENTS:
        flush_and_fence()


def capture_logging(fd: int, level: int = logging.INFO) -> None:
    """In a worker: send every logging record that a logger lets through to ``fd``, whatever
    handlers the script configures (its own handlers still get them too).

    The root logger starts at ``level`` (a script may change it), and records that find no
    handler of the script are not printed to stderr as well (they are already captured).
    """
    capture = _LogCapture(fd)
    original = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        capture.emit(record)
        original(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    logging.lastResort = logging.NullHandler()
    root = logging.getLogger()
    root.setLevel(level)
    # A handler of ours on the root logger stops logging.info() & co. from configuring a
    # stderr handler by themselves (their records are captured already); basicConfig()
    # called by the script itself works as it would without us.
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    original_config = logging.basicConfig

    def basic_config(**kwargs: Any) -> None:
        with contextlib.suppress(ValueError):
            root.removeHandler(placeholder)
        try:
            original_config(**kwargs)
        finally:
            if placeholder not in root.handlers:
                root.addHandler(placeholder)

    logging.basicConfig = basic_config


# -- the server's ends of a worker's pipes -------------------------------------------------------


class WorkerPipes:
    """One worker's output pipes: made by the server before the fork; the write ends go to
    the worker (fd 1, fd 2, the log pipe), the read ends stay here, non-blocking."""

    def __init__(self) -> None:
        self.streams: dict[int, str] = {}
        self._write: list[int] = []
        self.backlogged = False  # the hub asked for a pause in reading, or the rate is spent
        self.resume_at = 0.0  # monotonic time before which the pipes are not read again
        self._window = 0.0  # start of the present rate window
        self._window_bytes = 0
        try:
            for stream in STREAMS:
                r, w = os.pipe()
                self.streams[r] = stream
                self._write.append(w)
                os.set_blocking(r, False)
        except BaseException:
            self.close()
            raise

    def write_fds(self) -> tuple[int, int, int]:
        a, b, c = self._write
        return a, b, c

    def close_write_ends(self) -> None:
        for fd in self._write:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._write = []

    def read(self, fd: int, hub: OutputHub | None, pid: int | None) -> bool:
        """Read what pipe ``fd`` holds now (one chunk) into the hub; False at its end."""
        stream = self.streams.get(fd)
        if stream is None:
            return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if pid is not None and hub is not None and not hub.feed(pid, stream, data):
            self.backlogged = True
        now = time.monotonic()
        if now - self._window >= RATE_WINDOW:
            self._window, self._window_bytes = now, 0
        self._window_bytes += len(data)
        if self._window_bytes >= MAX_READ_RATE * RATE_WINDOW:
            # a flood: the script waits in its write until the window ends, and the other
            # procedures keep their share of the machine
            self.backlogged = True
            self.resume_at = self._window + RATE_WINDOW
        return True

    def drain(self, hub: OutputHub | None, pid: int | None, limit: int = 64) -> list[int]:
        """Read what every pipe holds now (at most ``limit`` chunks each); return the pipes
        that have ended."""
        ended = []
        for fd in list(self.streams):
            for _ in range(limit):
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    ended.append(fd)
                    break
                if pid is not None and hub is not None:
                    hub.feed(pid, self.streams[fd], data)
        return ended

    def close_fd(self, fd: int) -> None:
        if self.streams.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self.close_write_ends()
        for fd in list(self.streams):
            self.close_fd(fd)


# -- lines -----------------------------------------------------------------------------------


class _Splitter:
    """Bytes of one stream to lines: partial lines wait, long lines are cut once."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.since = 0.0  # when the partial line in buf began
        self.cutting = False  # the rest of a cut line is being left out, up to its newline

    def feed(self, data: bytes, now: float) -> list[str]:
        lines: list[str] = []
        parts = data.split(b"\n")
        last = parts.pop()  # after the last newline: the start of a line (maybe empty)
        for piece in parts:  # each of these ends a line
            if self.cutting:
                self.cutting = False  # the end of a cut line: left out
                continue
            if self.buf:
                self.buf += piece
                piece = bytes(self.buf)
                self.buf.clear()
            lines.append(_cut(piece, self.limit) if len(piece) > self.limit else _decode(piece))
        if last and not self.cutting:
            if not self.buf:
                self.since = now
            self.buf += last
            if len(self.buf) > self.limit:
                lines.append(_cut(self.buf, self.limit))
                self.buf.clear()
                self.cutting = True
        return lines

    def stale(self, now: float) -> str | None:
        """The partial line, once it has waited PARTIAL_WAIT seconds (or a cut line's note)."""
        if self.buf and now - self.since >= PARTIAL_WAIT:
            return self.rest()
        return None

    def rest(self) -> str | None:
        """At the end of the stream: what is left of a partial line."""
        if self.buf:
            text = _decode(self.buf)
            self.buf.clear()
            return text
        return None


def _decode(data: bytes | bytearray) -> str:
    """The text of one line; after a carriage return (a progress bar redrawing its line), what
    a terminal would show: the text after the last one."""
    text = data.decode("utf-8", "replace").rstrip("\r")
    return text.rsplit("\r", 1)[-1] if "\r" in text else text


def _cut(data: bytes | bytearray, limit: int) -> str:
    """The first ``limit`` bytes of a longer line (the limit of the splitter that cut it)."""
    return _decode(data[:limit]) + f" [line cut: longer than {limit} bytes; the rest is left out]"


def _log_line(raw: str) -> tuple[str, str, float | None, str | None]:
    """(text, level, time, logger) of a record the worker's log pipe carried; what is not a
    valid record is kept as text, level INFO."""
    try:
        doc = json.loads(raw)
        text, level, when = doc["text"], doc["level"], doc["time"]
        logger = doc.get("logger")
        if (
            isinstance(text, str)
            and isinstance(level, str)
            and isinstance(when, int | float)
            and (logger is None or isinstance(logger, str))
        ):
            return text, level[:20], float(when), None if logger is None else logger[:200]
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    return raw, "INFO", None, None


# -- the store -------------------------------------------------------------------------------

_SEQ = re.compile(rb'\{"seq":(\d+),')


def _segment_names(pid: int | None = None) -> re.Pattern[str]:
    """The file names of procedure ``pid``'s segments, ``<id>.<n>.jsonl`` (None: any
    procedure's)."""
    return re.compile((r"\d+" if pid is None else str(pid)) + r"\.\d+\.jsonl")


def remove_files(directory: str, pid: int) -> None:
    """Delete every segment of procedure ``pid`` in ``directory``."""
    pattern = _segment_names(pid)
    for name in os.listdir(directory):
        if pattern.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


class _Store:
    """One procedure's lines on disk: two segments at most, the older one deleted whole when
    the newer one fills half the limit."""

    def __init__(self, directory: str, pid: int, limit: int, earlier: str = "") -> None:
        """``earlier``: what to do with segments an earlier service left under this ID:
        "" (there are none), "remove" or "take" (they are this procedure's, from the durable
        history)."""
        self.directory = directory
        self.pid = pid
        self.half = max(limit // 2, 1024)
        self.segments: list[tuple[int, int]] = []  # (segment number, first seq)
        self.size = 0  # bytes in the newest segment
        self.next_seq = 0  # seq after the last line written
        self._file: Any = None
        self._lock = threading.Lock()
        if earlier == "remove":
            remove_files(directory, pid)  # another procedure's lines under this ID
        elif earlier == "take":
            self._take_back()

    def _take_back(self) -> None:
        """The segments an earlier server left (a procedure of the durable history)."""
        pattern = _segment_names(self.pid)
        numbers = sorted(
            int(name.split(".")[1])
            for name in os.listdir(self.directory)
            if pattern.fullmatch(name)
        )
        for number in numbers[-2:]:
            try:
                with open(self._path(number), "rb") as f:
                    first = _SEQ.match(f.readline())
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 2 * MAX_LINE - 4096))
                    tail = [_SEQ.match(raw) for raw in f.readlines() if raw.endswith(b"\n")]
            except OSError:
                continue
            if first is not None:
                self.segments.append((number, int(first.group(1))))
                last = [m for m in tail if m is not None]
                if last:
                    self.next_seq = max(self.next_seq, int(last[-1].group(1)) + 1)

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"{self.pid}.{number}.jsonl")

    def write(self, lines: list[tuple[int, str]]) -> None:
        """Append (seq, JSON) lines, in seq order."""
        with self._lock:
            chunk: list[str] = []
            for seq, text in lines:
                if self._file is None or self.size >= self.half:
                    if chunk:
                        self._file.write("".join(chunk))
                        chunk = []
                    self._rotate(seq)
                chunk.append(text + "\n")
                self.size += len(text) + 1
            if chunk:
                self._file.write("".join(chunk))
            if lines:
                self.next_seq = lines[-1][0] + 1
            if self._file is not None:
                self._file.flush()

    def _rotate(self, first_seq: int) -> None:
        if self._file is not None:
            self._file.close()
        number = self.segments[-1][0] + 1 if self.segments else 0
        while len(self.segments) >= 2:
            old, _ = self.segments.pop(0)
            with contextlib.suppress(OSError):
                os.unlink(self._path(old))
        self.segments.append((number, first_seq))
        self._file = open(self._path(number), "w", encoding="utf-8")
        self.size = 0

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def remove(self) -> None:
        self.close()
        with self._lock:
            remove_files(self.directory, self.pid)
            self.segments = []

    def first_kept(self) -> int:
        with self._lock:
            return self.segments[0][1] if self.segments else self.next_seq

    def read(self, since: int, max_lines: int, max_bytes: int) -> tuple[list[str], int]:
        """JSON texts of the lines with seq >= since, and the seq to ask for next."""
        with self._lock:
            segments = list(self.segments)
            written = self.next_seq
            if self._file is not None:
                self._file.flush()
        out: list[str] = []
        size = 0
        last = None
        for i, (number, _first) in enumerate(segments):
            if i + 1 < len(segments) and segments[i + 1][1] <= since:
                continue  # every line of this segment is older than since
            try:
                f = open(self._path(number), "rb")
            except FileNotFoundError:
                continue  # deleted since we looked: its lines are dropped
            with f:
                for raw in f:
                    match = _SEQ.match(raw)
                    if match is None or not raw.endswith(b"\n"):
                        continue
                    seq = int(match.group(1))
                    if seq < since or seq >= written:
                        continue
                    text = raw[:-1].decode("utf-8", "replace")
                    if out and (len(out) >= max_lines or size + len(text) > max_bytes):
                        return out, seq
                    out.append(text)
                    size += len(text) + 1
                    last = seq
        if last is not None:
            return out, last + 1
        first = segments[0][1] if segments else written
        return out, min(max(since, first), written)


# -- events ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OutputBatch:
    """Lines a procedure wrote since its previous batch (JSON texts of LINE objects), and how
    many lines between the two were left out of this event (they are on disk)."""

    id: int
    lines: list[str]
    skipped: int = 0

    def to_json(self, topic: str | None = None) -> str:
        head = f'{{"topic":{json.dumps(topic)},' if topic else "{"
        tail = f',"skipped":{self.skipped}}}' if self.skipped else "}"
        return f'{head}"id":{self.id},"lines":[{",".join(self.lines)}]{tail}'

    def to_sse(self) -> bytes:
        """The Server-Sent Event of the batch, with its topic."""
        return b"data: " + self.to_json(OUTPUT_TOPIC).encode() + b"\n\n"


@dataclasses.dataclass(frozen=True)
class ScriptMessage:
    """A pypubsub message a script sent."""

    id: int
    topic: str
    time: float
    msg_src: Any
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "time": self.time,
            "msg_src": self.msg_src,
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=repr)

    def to_sse(self) -> bytes:
        """The Server-Sent Event of the message: its own topic, as the script sent it."""
        return b"data: " + self.to_json().encode() + b"\n\n"


OutputListener = Callable[[OutputBatch | ScriptMessage], None]


@dataclasses.dataclass
class _Proc:
    store: _Store
    # filled by the supervisor thread (under the hub's lock): bytes as read, not yet split
    raw: list[tuple[str, bytes, float]] = dataclasses.field(default_factory=list)
    raw_bytes: int = 0
    # the rest is the pump's (or whoever holds flush_lock)
    splitters: dict[str, _Splitter] = dataclasses.field(
        default_factory=lambda: {
            "stdout": _Splitter(),
            "stderr": _Splitter(),
            "log": _Splitter(_MAX_LOG_RECORD),
        }
    )
    next_seq: int = 0
    pending: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # not on disk
    pending_bytes: int = 0
    lost: int = 0  # lines dropped before they reached disk
    event: deque[str] = dataclasses.field(default_factory=deque)  # not yet in an event
    event_bytes: int = 0
    skipped: int = 0
    last_batch: float = 0.0
    due: bool = False  # bytes or lines wait for the pump
    ended: bool = False
    msg_window: float = 0.0
    msg_count: int = 0
    msg_dropped: int = 0
    flush_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_encode_text: Callable[[str], str] = json.encoder.encode_basestring_ascii


class OutputHub:
    """Every procedure's output and script messages, for one service (see the module doc).

    :meth:`feed` (bytes as read), :meth:`end` and :meth:`message` are called from the
    supervisor thread and never wait for a client: a thread of the hub (the pump) splits the
    bytes into lines, writes them to disk and hands them, in batches, to the listeners, which
    are called in order per procedure and must not block. When a procedure's bytes come faster
    than the pump takes them, :meth:`feed` says so, and the supervisor stops reading that
    worker's pipes until :meth:`accepting` says the backlog is small again: the script then
    waits in its ``write`` (nothing is lost, and the server's memory stays bounded).
    """

    #: Bytes read and not yet split beyond which a worker's pipes are left unread...
    RAW_HIGH = 1 << 20
    #: ...until the backlog is down to this.
    RAW_LOW = 256 * 1024

    def __init__(self, directory: str, limit: int, temporary: bool = False) -> None:
        if limit < 1024:
            raise ValueError("the output limit must be at least 1024 bytes")
        self._temporary = directory if temporary else None
        self.directory = os.path.join(directory, "output")
        os.makedirs(self.directory, exist_ok=True)
        #: IDs with segments an earlier service left (looked for once, here)
        any_segment = _segment_names()
        self._on_disk = {
            int(name.split(".", 1)[0])
            for name in os.listdir(self.directory)
            if any_segment.fullmatch(name)
        }
        self.limit = limit
        self._procs: dict[int, _Proc] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._listeners: list[OutputListener] = []
        self._listen_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="oet-output", daemon=True)
        self._thread.start()

    # -- listeners -----------------------------------------------------------------------------

    def add_listener(self, listener: OutputListener) -> None:
        with self._listen_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: OutputListener) -> None:
        with self._listen_lock:
            self._listeners.remove(listener)

    def _emit(self, item: OutputBatch | ScriptMessage) -> None:
        with self._listen_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(item)
            except Exception:
                LOGGER.exception("Procedure %s: an output listener failed", item.id)

    # -- input, from the supervisor ----------------------------------------------------------

    def _proc(self, pid: int) -> _Proc:
        proc = self._procs.get(pid)
        if proc is None:
            earlier = "remove" if pid in self._on_disk else ""
            self._on_disk.discard(pid)
            proc = self._procs[pid] = _Proc(_Store(self.directory, pid, self.limit, earlier))
        return proc

    def feed(self, pid: int, stream: str, data: bytes, now: float | None = None) -> bool:
        """Bytes that procedure ``pid`` wrote to ``stream``; False when its backlog is so
        large that its pipes should not be read until :meth:`accepting`."""
        now = time.time() if now is None else now
        with self._lock:
            if self._closed:
                return True
            proc = self._proc(pid)
            if proc.ended:
                return True
            proc.raw.append((stream, data, now))
            proc.raw_bytes += len(data)
            if not proc.due:
                proc.due = True
                self._wake.notify()
            return proc.raw_bytes < self.RAW_HIGH

    def accepting(self, pid: int) -> bool:
        """Whether procedure ``pid``'s pipes may be read again (its backlog is small)."""
        with self._lock:
            proc = self._procs.get(pid)
            return proc is None or proc.ended or proc.raw_bytes <= self.RAW_LOW

    def _split(self, pid: int, proc: _Proc, final: bool = False) -> None:
        """Turn the bytes read into numbered lines (flush_lock held); the procedure is due
        again only if more bytes came meanwhile."""
        with self._lock:
            raw, proc.raw, proc.raw_bytes = proc.raw, [], 0
        for stream, data, now in raw:
            splitter = proc.splitters[stream]
            texts = splitter.feed(data, now)
            if texts:
                self._add(proc, stream, texts, now)
        wall = time.time()
        for stream, splitter in proc.splitters.items():
            text = splitter.rest() if final else splitter.stale(wall)
            if text is not None:
                self._add(proc, stream, [text], wall)
        with self._lock:
            proc.due = bool(proc.raw)

    def _add(self, proc: _Proc, stream: str, texts: list[str], now: float) -> None:
        stamp = repr(now)
        head = f',"time":{stamp},"stream":"{stream}",'
        seq = proc.next_seq
        encoded = []
        for text in texts:
            if stream == "log":
                text, level, when, logger = _log_line(text)
                extra = f',"logger":{_encode_text(logger)}' if logger is not None else ""
                encoded.append(
                    f'{{"seq":{seq},"time":{now if when is None else when!r},'
                    f'"stream":"log","level":{_encode_text(level)}{extra},'
                    f'"text":{_encode_text(text)}}}'
                )
            else:
                # ASCII JSON: Tango strings are Latin-1
                encoded.append(f'{{"seq":{seq}{head}"text":{_encode_text(text)}}}')
            proc.pending.append((seq, encoded[-1]))
            proc.pending_bytes += len(encoded[-1])
            seq += 1
        proc.next_seq = seq
        while proc.pending_bytes > MAX_PENDING_BYTES and len(proc.pending) > 1:
            _seq, old = proc.pending.pop(0)
            proc.pending_bytes -= len(old)
            proc.lost += 1
        proc.event.extend(encoded)
        proc.event_bytes += sum(len(e) + 1 for e in encoded)
        while len(proc.event) > 1 and (
            len(proc.event) > MAX_EVENT_LINES or proc.event_bytes > MAX_EVENT_BYTES
        ):
            proc.event_bytes -= len(proc.event.popleft()) + 1
            proc.skipped += 1

    def end(self, pid: int) -> None:
        """Procedure ``pid``'s worker has gone (its pipes are drained): write and send
        everything it wrote, before its final state is reported."""
        with self._lock:
            proc = self._procs.get(pid)
            if proc is None or proc.ended:
                return
            proc.ended = True
        self._flush(pid, proc, final=True)
        proc.store.close()

    def message(self, pid: int, topic: str, kwargs: dict[str, Any]) -> None:
        """A pub/sub message of procedure ``pid``'s script: passed on after the output it
        wrote before it."""
        if topic.startswith(OWN_TOPIC_PREFIXES):
            return
        now = time.time()
        with self._lock:
            if self._closed:
                return
            proc = self._proc(pid)
            if now - proc.msg_window >= 1.0:
                if proc.msg_dropped:
                    LOGGER.warning(
                        "Procedure %s: %s script messages were not passed on (more than %s a "
                        "second)",
                        pid,
                        proc.msg_dropped,
                        MAX_MESSAGES_PER_S,
                    )
                proc.msg_window, proc.msg_count, proc.msg_dropped = now, 0, 0
            proc.msg_count += 1
            if proc.msg_count > MAX_MESSAGES_PER_S:
                proc.msg_dropped += 1
                return
        data = {k: v for k, v in kwargs.items() if k != "msg_src"}
        text = json.dumps(data, default=repr)
        if len(text) > MAX_MESSAGE_BYTES:  # every client gets it: a bounded event
            data = {
                "cut": text[:4096],
                "note": f"the data had {len(text)} bytes of JSON, more than {MAX_MESSAGE_BYTES}",
            }
        with proc.flush_lock:
            self._flush_locked(pid, proc)
            self._emit(ScriptMessage(pid, topic, now, kwargs.get("msg_src"), data))

    # -- reading -------------------------------------------------------------------------------

    def get_output(self, pid: int, since: int = 0) -> dict[str, Any]:
        """``{"id", "lines", "next", "dropped"}``: a page of the kept lines with seq >= since."""
        with self._lock:
            proc = self._procs.get(pid)
            if proc is None:  # none written by this service: what an earlier one kept
                if pid not in self._on_disk:
                    return {"id": pid, "lines": [], "next": 0, "dropped": 0}
                self._on_disk.discard(pid)
                store = _Store(self.directory, pid, self.limit, earlier="take")
                proc = self._procs[pid] = _Proc(store, ended=True)
        texts, nxt = proc.store.read(max(0, since), MAX_PAGE_LINES, MAX_PAGE_BYTES)
        dropped = proc.store.first_kept() + proc.lost
        return {
            "id": pid,
            "lines": [json.loads(t) for t in texts],
            "next": nxt,
            "dropped": dropped,
        }

    def forget(self, pid: int) -> None:
        """Procedure ``pid`` has left the history: its output goes too."""
        with self._lock:
            proc = self._procs.pop(pid, None)
        if proc is not None:
            with proc.flush_lock:
                proc.store.remove()
        elif pid in self._on_disk:
            self._on_disk.discard(pid)
            remove_files(self.directory, pid)

    # -- the batches ---------------------------------------------------------------------------

    def _flush(self, pid: int, proc: _Proc, final: bool = False) -> None:
        with proc.flush_lock:
            self._flush_locked(pid, proc, final)

    def _flush_locked(self, pid: int, proc: _Proc, final: bool = False) -> None:
        """Split what was read, write the lines to disk, then send them as one batch."""
        self._split(pid, proc, final)
        pending, proc.pending, proc.pending_bytes = proc.pending, [], 0
        lines, proc.event, proc.event_bytes = list(proc.event), deque(), 0
        skipped, proc.skipped = proc.skipped, 0
        if pending:
            try:
                proc.store.write(pending)
            except OSError as exc:
                LOGGER.error("Procedure %s: cannot keep its output on disk: %s", pid, exc)
        if lines:
            proc.last_batch = time.monotonic()
            self._emit(OutputBatch(pid, lines, skipped))

    def _pump(self) -> None:
        """Split bytes as they come; send a procedure's lines at once when it had no batch in
        the last BATCH_INTERVAL, else that long after the previous one."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                wall = time.time()
                work: list[tuple[int, _Proc, bool]] = []  # (id, proc, send now)
                wait: float | None = None
                for pid, proc in self._procs.items():
                    if proc.ended:
                        continue
                    for splitter in proc.splitters.values():
                        if splitter.buf:
                            left = splitter.since + PARTIAL_WAIT - wall
                            wait = left if wait is None else min(wait, left)
                            if left <= 0:
                                proc.due = True
                    if not proc.due and not proc.event:
                        continue
                    left = proc.last_batch + BATCH_INTERVAL - now
                    if left <= 0:
                        work.append((pid, proc, True))
                    else:
                        wait = left if wait is None else min(wait, left)
                        if proc.raw:
                            work.append((pid, proc, False))
                if not work:
                    self._wake.wait(None if wait is None else max(wait, 0.001))
                    continue
            for pid, proc, send in work:
                with proc.flush_lock:
                    if proc.ended:
                        continue
                    if send:
                        self._flush_locked(pid, proc)
                    else:
                        self._split(pid, proc)  # keep up; the batch goes out when due
            if not any(send for _p, _q, send in work):
                time.sleep(0.001)  # let the bytes gather a little while a batch waits

    def close(self) -> None:
        """Write what is pending and stop (the files stay)."""
        with self._lock:
            procs = list(self._procs.items())
        for pid, proc in procs:
            self._flush(pid, proc, final=True)
            proc.store.close()
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(5)
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)


def open_hub(directory: str | None, limit: int) -> OutputHub:
    """The hub of a service: output kept under ``directory`` (None: a temporary directory,
    deleted when the hub closes)."""
    if directory is None:
        return OutputHub(tempfile.mkdtemp(prefix="oet-output-"), limit, temporary=True)
    return OutputHub(os.path.abspath(os.path.expanduser(directory)), limit)


# -- for the device and other faces ------------------------------------------------------------


def device_data_dir(configured: str | None, device_name: str) -> str:
    """The folder of one device under DataDirectory (each device keeps its own)."""
    from ska_oso_oet.procedure import settings

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", device_name.strip("/").lower().replace("/", "."))
    return os.path.join(settings.data_dir(configured), "devices", safe or "device")


def parse_get_output(request: str) -> tuple[int, int]:
    """(id, since) of a GetOutput request ``{"id": 1, "since": 0}``; ValueError with words
    a person can act on."""
    example = 'GetOutput takes {"id": N, "since": S}, e.g. {"id": 1, "since": 0}'
    try:
        doc = json.loads(request)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"The request is not valid JSON ({exc}); {example}") from None
    if not isinstance(doc, dict) or "id" not in doc or not set(doc) <= {"id", "since"}:
        raise ValueError(f"Invalid request: {example}")
    pid, since = doc["id"], doc.get("since", 0)
    for name, value in (("id", pid), ("since", since)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Invalid request: {name} must be an integer >= 0; {example}")
    return pid, since


# -- the server's own log ----------------------------------------------------------------------

_NAMES_PROCEDURE = re.compile(r"(?:Procedure|procedure) (\d+)\b")


class SkaLogFormatter(logging.Formatter):
    """SKA's log line: ``1|<UTC time>Z|LEVEL|thread|function|file#line|tags|message``; a record
    about a procedure is tagged ``procedure:<id>`` (its message names the ID), so that an
    operator can pick one procedure's records out of the server's log."""

    def __init__(self) -> None:
        super().__init__(
            "1|%(asctime)s|%(levelname)s|%(threadName)s|%(funcName)s|"
            "%(filename)s#%(lineno)d|%(tags)s|%(message)s"
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "tags"):
            match = _NAMES_PROCEDURE.search(record.getMessage())
            record.tags = f"procedure:{match.group(1)}" if match else ""
        return super().format(record)
