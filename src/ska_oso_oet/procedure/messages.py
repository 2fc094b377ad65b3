"""The messages between the supervisor and its worker processes, as small typed records.

Each worker has one duplex stream socket. A message is one frame: a 4-byte big-endian length,
then the body.

- Supervisor -> worker (:data:`ToWorker`): pickled. They come from the server, which the worker
  trusts, and carry Python objects of the API (scripts, :class:`ProcedureInput`).
- Worker -> supervisor (:data:`FromWorker`): JSON, checked field by field on receipt
  (:func:`decode_from_worker`). A worker runs a script, and a script can write anything down
  its socket, so the server treats what arrives as untrusted data, never code: a message that
  does not parse or does not match a record is a :class:`ProtocolError`.

This module is imported by every worker, so it stays light: standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
from typing import Any

from ska_oso_oet import scripting
from ska_oso_oet.procedure import strictjson
from ska_oso_oet.procedure.callables import valid_spec

#: Frame header: the body's length.
HEADER = struct.Struct("!I")
#: Largest frame a worker may send (a script's pub/sub payload included).
MAX_FROM_WORKER = 16 * 1024 * 1024
#: Most callables a script may offer a Start.
MAX_CALLABLES = 10_000
#: The server's own pub/sub topics (its process management and lifecycle): a worker never
#: sends them (``worker.PRIVATE_TOPIC_PREFIX``, this prefix), so one that arrives is forged,
#: and refused.
SERVER_TOPIC_PREFIX = "procedure."
#: Longest JSON text of a function's result kept in a summary (a longer one is cut, said so).
MAX_RESULT = 64 * 1024
#: Longest progress message (the scripting module cuts longer ones to its own limit).
MAX_PROGRESS_MESSAGE = scripting.MAX_MESSAGE


class ProtocolError(ValueError):
    """A worker sent something that is not a valid message."""


# -- supervisor -> worker --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Load:
    """Load the procedure's script (a git script: from its checkout) and call its ``init``."""

    procedure_id: int
    script: Any  # ExecutableScript
    init_args: Any  # ProcedureInput
    context: Any  # ScriptContext
    local_path: str | None = None
    git_settings: Any = None  # GitSettings, for git scripts


@dataclasses.dataclass(frozen=True)
class PrepareEnv:
    """Clone a git script's repository and make (or wait for) its environment."""

    procedure_id: int
    script: Any  # GitScript
    git_settings: Any  # GitSettings


@dataclasses.dataclass(frozen=True)
class Run:
    """Call a function of the loaded script."""

    fn_name: str
    run_args: Any  # ProcedureInput
    context: Any  # ScriptContext


@dataclasses.dataclass(frozen=True)
class PubSub:
    """A pypubsub message; sent both ways (a script's message, or another script's)."""

    topic: str
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Pause:
    """Pause at the script's next ``checkpoint()``."""


@dataclasses.dataclass(frozen=True)
class Resume:
    """Cancel a pending pause, or go on from the checkpoint the script is paused at."""


ToWorker = Load | PrepareEnv | Run | PubSub | Pause | Resume


def encode_to_worker(msg: ToWorker) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode_to_worker(body: bytes) -> ToWorker:
    msg = pickle.loads(body)
    if not isinstance(msg, Load | PrepareEnv | Run | PubSub | Pause | Resume):
        raise ProtocolError(f"Not a message for a worker: {type(msg).__name__}")
    return msg


# -- worker -> supervisor --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StateChange:
    """The worker's procedure entered ``state`` (a :class:`ProcedureState` name) at ``time``."""

    state: str
    time: float
    # at READY: what a Start may call, each with its signature (callables.SignatureSpec)
    callables: dict[str, Any] | None = None
    git_commit: str | None = None  # at IDLE after loading a git script: the commit loaded


@dataclasses.dataclass(frozen=True)
class Exit:
    """Sent just before the worker exits by itself: its final state, and the PIDs of the
    processes it started and has killed (the supervisor waits for them to be gone)."""

    state: str
    stacktrace: str | None
    killed: list[int]


@dataclasses.dataclass(frozen=True)
class Progress:
    """The script's latest ``report_progress(fraction, message)``, made at ``time``."""

    fraction: float | None
    message: str
    time: float


@dataclasses.dataclass(frozen=True)
class Result:
    """What the started function returned, as :func:`bound_result` made it."""

    value: Any


FromWorker = StateChange | Exit | PubSub | Progress | Result

_FROM_WORKER: dict[str, type[FromWorker]] = {
    "state": StateChange,
    "exit": Exit,
    "pubsub": PubSub,
    "progress": Progress,
    "result": Result,
}
_KIND = {cls: kind for kind, cls in _FROM_WORKER.items()}


def encode_from_worker(msg: FromWorker) -> bytes:
    """JSON of ``msg``; what JSON cannot hold (a script's own objects in a pub/sub payload)
    goes as its ``repr``.

    The record is built field by field, not by ``dataclasses.asdict``: that rebuilds every
    container by calling its class, which a ``defaultdict`` or a subclass with an
    ``__init__`` of its own refuses; ``json`` writes those as the plain JSON they hold."""
    doc = {"kind": _KIND[type(msg)], **_fields(msg)}
    body = json.dumps(doc, default=_json_default, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _json_default(value: Any) -> Any:
    """A dataclass in a payload goes as the object of its fields (as ``asdict`` made it),
    anything else JSON cannot hold as its ``repr``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    return repr(value)


def _check(value: Any, kind: Any, name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _optional_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    return None if value is None else _check(value, str, name)


def _str_list(value: Any, name: str, item: type) -> list[Any]:
    _check(value, list, name)
    for entry in value:
        _check(entry, item, name)
    return list(value)


def _callables(value: Any) -> dict[str, Any]:
    _check(value, dict, "callables")
    if len(value) > MAX_CALLABLES:
        raise ProtocolError(f"more than {MAX_CALLABLES} callables")
    for name, spec in value.items():
        if not name.isidentifier() or not valid_spec(spec):
            raise ProtocolError(f"callable {name[:80]!r} is not described correctly")
    return dict(value)


def decode_from_worker(body: bytes) -> FromWorker:
    """The record in ``body``; :class:`ProtocolError` unless it is exactly a valid one."""
    try:
        doc = strictjson.loads_finite(body)  # NaN and Infinity from a script: null
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not a JSON object")
    cls = _FROM_WORKER.get(doc.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown message kind {doc.get('kind')!r}")
    expected = {f.name for f in dataclasses.fields(cls)} | {"kind"}
    if not set(doc) <= expected:
        raise ProtocolError(f"unexpected fields {sorted(set(doc) - expected)}")
    try:
        if cls is StateChange:
            found = doc.get("callables")
            return StateChange(
                state=_check(doc["state"], str, "state"),
                time=float(_check(doc["time"], int | float, "time")),
                callables=None if found is None else _callables(found),
                git_commit=_optional_str(doc, "git_commit"),
            )
        if cls is Exit:
            return Exit(
                state=_check(doc["state"], str, "state"),
                stacktrace=_optional_str(doc, "stacktrace"),
                killed=_str_list(doc["killed"], "killed", int),
            )
        if cls is Progress:
            return _progress(doc)
        if cls is Result:
            if len(body) > MAX_RESULT + 64:
                raise ProtocolError(f"a result of {len(body)} bytes (at most {MAX_RESULT})")
            return Result(value=doc["value"])
        topic = _check(doc["topic"], str, "topic")
        if topic.startswith(SERVER_TOPIC_PREFIX):
            raise ProtocolError(f"a pub/sub message on the server's own topic {topic[:80]!r}")
        return PubSub(topic=topic, kwargs=_check(doc["kwargs"], dict, "kwargs"))
    except KeyError as exc:
        raise ProtocolError(f"missing field {exc}") from None


def _progress(doc: dict[str, Any]) -> Progress:
    fraction = doc["fraction"]
    if fraction is not None:
        fraction = float(_check(fraction, int | float, "fraction"))
        if not 0.0 <= fraction <= 1.0:
            raise ProtocolError(f"progress fraction {fraction!r} is not from 0 to 1")
    message = _check(doc["message"], str, "message")
    if len(message) > MAX_PROGRESS_MESSAGE:
        raise ProtocolError(f"a progress message of {len(message)} characters")
    return Progress(fraction, message, float(_check(doc["time"], int | float, "time")))


def bound_result(value: Any) -> Any:
    """A function's return value as a summary holds it: the value itself when it is standard
    JSON (finite numbers, nested at most ``strictjson.MAX_DEPTH`` deep, whatever the Python)
    of at most :data:`MAX_RESULT` characters, else its ``repr``; a text over the bound is cut
    and ends with a note saying so."""
    try:
        strictjson.check(value)
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        try:
            value = repr(value)
        except Exception as exc:  # a script's __repr__ can fail like any code
            value = f"<{type(value).__name__} object; its repr failed: {exc!r}>"
        text = json.dumps(value)
    if len(text) <= MAX_RESULT:
        return value
    raw = text if not isinstance(value, str) else value
    note = f" ... [cut: the result is {len(text)} characters of JSON, {MAX_RESULT} are kept]"
    keep = MAX_RESULT - len(note) - 2
    while keep > 0 and len(json.dumps(raw[:keep] + note)) > MAX_RESULT:
        keep = keep * 3 // 4  # characters that JSON escapes take more room
    return raw[:keep] + note


class FrameReader:
    """Splits a byte stream into frame bodies; refuses frames over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        bodies: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self._limit:
                raise ProtocolError(f"a message of {size} bytes (at most {self._limit})")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            bodies.append(bytes(self._buf[HEADER.size : end]))
            del self._buf[:end]
        return bodies
