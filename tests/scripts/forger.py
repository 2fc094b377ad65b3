"""Writes forged messages down its own worker's socket (found among its open descriptors)."""

import json
import os
import pickle
import stat
import struct


class _Plant:
    """Unpickling this would create the file ``path``: proof that the server ran our code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _sockets():
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                yield fd
        except OSError:
            pass


def main(kind, marker):  # marker: a file to plant (for hijack: the ID of the victim)
    if kind == "pickle":
        body = pickle.dumps(_Plant(marker))
    elif kind == "state":
        body = b'{"kind": "state", "state": "COMPLETE", "time": "soon"}'
    elif kind == "final":  # well-formed, but only the supervisor reports a final state
        body = b'{"kind": "state", "state": "COMPLETE", "time": 1.0}'
    elif kind == "hijack":  # the server's own topic: stop procedure ``marker``
        for n in range(1, 500):  # whichever process manager the server has
            kwargs = {"msg_src": f"process-manager-{n}", "procedure_id": int(marker)}
            body = json.dumps(
                {"kind": "pubsub", "topic": "procedure.management.stop", "kwargs": kwargs}
            ).encode()
            for fd in _sockets():
                os.write(fd, struct.pack("!I", len(body)) + body)
        return
    elif kind == "huge":
        body = b""  # the header alone claims more than any message may have
        for fd in _sockets():
            os.write(fd, struct.pack("!I", 0xFFFFFFF0))
        return
    else:
        body = b"\x00not json at all"
    for fd in _sockets():
        os.write(fd, struct.pack("!I", len(body)) + body)
