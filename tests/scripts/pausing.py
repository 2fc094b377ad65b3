"""Scripts that pause at checkpoints; a test paces them through a socket on 127.0.0.1.

Each step waits for one byte from the test (``port``), then calls checkpoint(), so that a test
can ask for a pause before the script gets to a checkpoint and know where it will pause.
"""

import json
import socket
import threading
import time

from ska_oso_oet import scripting
from ska_oso_oet.scripting import checkpoint, report_progress

GATE = None


def _connect(port):
    global GATE
    if port and GATE is None:
        GATE = socket.create_connection(("127.0.0.1", port), timeout=60)
        GATE.settimeout(None)


def _wait(port):
    """Block until the test lets the script take one more step. The byte says what the
    test asked of the OET just before: b"p" a pause, b"r" a resume; the script then waits
    until its worker has that request (it travels on another channel than this byte)."""
    if port:
        _connect(port)
        byte = GATE.recv(1)
        if not byte:
            raise RuntimeError("the test closed the gate")
        if byte in b"pr":
            wanted = byte == b"p"
            deadline = time.monotonic() + 20
            while scripting._agent.pause_requested is not wanted:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the worker never had pause_requested={wanted}")
                time.sleep(0.001)


def init(port=None, in_init=False, subarray_id=None, context=None):
    global INIT_ID
    INIT_ID = context.procedure_id
    if in_init:  # a checkpoint in init: nothing to pause, it returns at once
        _wait(port)
        checkpoint("in init")


def steps(port=None, n=3, marker_file=None, context=None):
    try:
        for i in range(n):
            _wait(port)
            checkpoint(f"step {i}")
            report_progress((i + 1) / n, f"step {i + 1} of {n}")
    finally:
        if marker_file:
            with open(marker_file, "w") as f:
                f.write("cleaned up")
    return {"steps": n, "procedure_id": context.procedure_id, "init_id": INIT_ID}


def main(port=None, n=3, marker_file=None, context=None):
    return steps(port, n, marker_file, context=context)


def twice(port=None):
    """Two checkpoints in a row: one pause stops at the first; the second returns at once."""
    _wait(port)
    checkpoint("first")
    checkpoint("second")
    _wait(port)
    return "twice"


def threaded(port=None, n=3, marker_file=None, context=None):
    """The checkpoints are in a thread the script started; main waits for it."""
    out = {}

    def work():
        out["result"] = steps(port, n, None, context=context)

    worker = threading.Thread(target=work, name="stepper")
    worker.start()
    try:
        worker.join()
    finally:
        if marker_file:
            with open(marker_file, "w") as f:
                f.write("cleaned up")
    return out["result"]


def progress_loop(n=100_000):
    for i in range(n):
        report_progress(i / n, "looping")
    report_progress(1.0, "done")
    return n


def returns(kind="json"):
    if kind == "json":
        return {"answer": 42, "list": [1, 2.5, "x", None, True]}
    if kind == "object":
        return {1, 2}  # not JSON: its repr
    if kind == "nan":
        return float("nan")
    if kind == "big":
        return "x" * 100_000
    if kind == "bigobject":
        return [object()] * 10_000
    if kind == "none":
        return None
    return json.loads(kind)


def no_checkpoint(port=None):
    """Never calls checkpoint(): a pause stays pending and the function runs to its end."""
    _wait(port)
    return "ran on"


def forks(port=None):
    """A child forked while a pause is pending: its checkpoint returns at once (only the
    worker's own threads pause), the worker's own checkpoint pauses."""
    import multiprocessing

    _wait(port)  # the test has asked for a pause
    with multiprocessing.Pool(1) as pool:
        assert pool.apply(_child_checkpoint, ()) == "child went on"
    checkpoint("parent")
    return "forked"


def _child_checkpoint():
    checkpoint("child")
    return "child went on"
