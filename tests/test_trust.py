"""What a worker sends is untrusted data: a forged message fails its own procedure only."""

from __future__ import annotations

import collections

import pytest

from ska_oso_oet.procedure import messages as m
from ska_oso_oet.procedure.application import PrepareProcessCommand, StartProcessCommand
from ska_oso_oet.procedure.domain import FileSystemScript, ProcedureInput, ProcedureState
from tests.helpers import script

S = ProcedureState
TIMEOUT = 20


@pytest.mark.parametrize("kind", ["pickle", "state", "final", "garbage", "huge", "hijack"])
def test_a_forged_message_fails_only_its_own_procedure(make_service, tmp_path, kind):
    ses = make_service(max_running=2)
    marker = tmp_path / "planted"
    bystander = ses.prepare(PrepareProcessCommand(script("sleeper.py"), ProcedureInput()))
    forger = ses.prepare(PrepareProcessCommand(script("forger.py"), ProcedureInput()))
    for summary in (bystander, forger):
        ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(bystander.id, "main", ProcedureInput(seconds=0.5)))
    target = str(bystander.id) if kind == "hijack" else str(marker)  # hijack: stop it
    ses.start(StartProcessCommand(forger.id, "main", ProcedureInput(kind, target)))

    ended = ses.wait_for_state(forger.id, [S.COMPLETE, S.FAILED, S.STOPPED], TIMEOUT)
    assert ended.state is S.FAILED
    assert "sent an invalid message" in ended.history.stacktrace
    assert not marker.exists()  # the pickle was never unpickled
    assert ses.wait_for_state(bystander.id, [S.COMPLETE, S.FAILED], TIMEOUT).state is S.COMPLETE
    # and the service goes on serving
    again = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    assert ses.wait_for_state(again.id, S.READY, TIMEOUT).state is S.READY


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"kind": "eval", "code": "1"}',
        b'{"kind": "state", "state": "READY"}',
        b'{"kind": "state", "state": "READY", "time": true}',
        b'{"kind": "state", "state": "READY", "time": 1, "callables": {"main": [1]}}',
        b'{"kind": "state", "state": "READY", "time": 1, "callables": {"x y": null}}',
        b'{"kind": "state", "state": "READY", "time": 1, "extra": 1}',
        b'{"kind": "exit", "state": "COMPLETE", "stacktrace": null, "killed": ["1"]}',
        b'{"kind": "pubsub", "topic": 3, "kwargs": {}}',
        b'{"kind": "pubsub", "topic": "procedure.management.stop", "kwargs": {}}',
        b"[" * 100000,
    ],
)
def test_decoding_refuses_anything_but_a_valid_record(body):
    with pytest.raises(m.ProtocolError):
        m.decode_from_worker(body)


def test_records_round_trip_and_unencodable_payloads_go_as_repr():
    for msg in (
        m.StateChange(
            "READY",
            1.5,
            {"main": {"text": "(x=1)", "params": [["x", "POSITIONAL_OR_KEYWORD", True]]}},
            None,
        ),
        m.Exit("FAILED", "Traceback", [12, 13]),
        m.PubSub("user.topic", {"n": 1, "nested": {"x": [1, "a"]}}),
    ):
        frame = m.encode_from_worker(msg)
        assert m.FrameReader(m.MAX_FROM_WORKER).feed(frame) == [frame[4:]]
        assert m.decode_from_worker(frame[4:]) == msg
    frame = m.encode_from_worker(m.PubSub("t", {"obj": object}))
    assert m.decode_from_worker(frame[4:]) == m.PubSub("t", {"obj": repr(object)})


def test_frames_split_anywhere_are_reassembled_and_oversized_ones_refused():
    frames = b"".join(m.encode_from_worker(m.Exit("COMPLETE", None, [i])) for i in range(3))
    reader = m.FrameReader(1000)
    bodies = [body for byte in range(len(frames)) for body in reader.feed(frames[byte : byte + 1])]
    assert [m.decode_from_worker(b) for b in bodies] == [
        m.Exit("COMPLETE", None, [i]) for i in range(3)
    ]
    with pytest.raises(m.ProtocolError):
        m.FrameReader(10).feed(m.encode_from_worker(m.Exit("COMPLETE", "x" * 20, [])))


def test_non_finite_numbers_from_a_worker_are_read_as_null():
    frame = m.encode_from_worker(
        m.PubSub("user.values", {"x": float("nan"), "y": [float("inf"), -float("inf"), 1.5]})
    )
    assert b"NaN" in frame  # what Python's json writes; the server never holds it
    assert m.decode_from_worker(frame[4:]) == m.PubSub(
        "user.values", {"x": None, "y": [None, None, 1.5]}
    )
    body = b'{"kind": "state", "state": "READY", "time": NaN}'
    with pytest.raises(m.ProtocolError, match="time"):
        m.decode_from_worker(body)


def test_the_server_topics_are_the_ones_a_worker_keeps_to_itself():
    from ska_oso_oet.procedure import manager, worker

    assert m.SERVER_TOPIC_PREFIX == worker.PRIVATE_TOPIC_PREFIX
    for topic in (manager.CREATE_TOPIC, manager.RUN_TOPIC, manager.STOP_TOPIC):
        assert topic.startswith(m.SERVER_TOPIC_PREFIX)
    assert manager.STATECHANGE_TOPIC.startswith(m.SERVER_TOPIC_PREFIX)


def test_a_container_subclass_returned_by_main_completes_with_its_plain_json(
    make_service, tmp_path
):
    """dataclasses.asdict rebuilt a defaultdict by calling its class with the items, which
    raised TypeError in the worker after main had returned: the procedure went FAILED."""
    path = tmp_path / "subclass_result.py"
    path.write_text(
        "import collections\n\n\ndef main():\n"
        "    return collections.defaultdict(list, {'a': [1]})\n"
    )
    ses = make_service()
    pid = ses.prepare(
        PrepareProcessCommand(FileSystemScript(f"file://{path}"), ProcedureInput())
    ).id
    ses.wait_for_state(pid, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(pid, "main", ProcedureInput()))
    ended = ses.wait_for_state(pid, [S.COMPLETE, S.FAILED, S.STOPPED], TIMEOUT)
    assert ended.state is S.COMPLETE, ended.history.stacktrace
    assert ended.result == {"a": [1]}


class _Tagged(dict):
    def __init__(self, tag, **items):
        super().__init__(**items)
        self.tag = tag


def test_container_subclasses_encode_as_the_plain_json_they_hold():
    plain = m.encode_from_worker(m.PubSub("user.t", {"d": {"a": [1]}, "l": [1, 2]}))
    for kwargs in (
        {"d": collections.defaultdict(list, {"a": [1]}), "l": [1, 2]},
        {"d": _Tagged("x", a=[1]), "l": _List([1, 2])},
    ):
        assert m.encode_from_worker(m.PubSub("user.t", kwargs)) == plain
    assert m.encode_from_worker(m.Result(collections.OrderedDict(a=1))) == (
        m.encode_from_worker(m.Result({"a": 1}))
    )


class _List(list):
    def __init__(self, items, note="n"):
        super().__init__(items)
        self.note = note


def test_the_log_pipe_splitter_cuts_an_overlong_line_at_its_own_limit():
    """A line on the log pipe (which a script can write anything to) over the log splitter's
    limit is cut at that limit, and the note names it: not at the MAX_LINE of stdout."""
    from ska_oso_oet.procedure import output

    limit = output._MAX_LOG_RECORD
    for chunks in ([b"x" * (limit + 10) + b"\n"], [b"x" * (limit + 10), b"tail\n"]):
        splitter = output._Splitter(limit)
        lines = [line for chunk in chunks for line in splitter.feed(chunk, 0.0)]
        [cut] = lines
        kept, note = cut.split(" [line cut", 1)
        assert kept == "x" * limit
        assert f"longer than {limit} bytes" in note
        assert splitter.feed(b"next\n", 0.0) == ["next"]
