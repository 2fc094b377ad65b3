"""What the side-by-side benchmarks (face.py, history.py, output.py) share: their command line,
the servers they measure and the ``procedureChange`` listener they time lifecycles with.

:func:`oet_servers` starts, on 127.0.0.1 and stopped by PID when it ends, a PyDatabaseds (sqlite
in ``tmp``) and one real ``ObservationExecutionTool`` server per entry of ``devices``: instance
``n`` serves ``oet/executor/<n>``, registered from ``tango-db/oet.json`` with the benchmark's
properties over the file's (``ScriptRoots`` the temporary folder, no abort script, no preloads,
``MaxRunning`` 1, unless the entry says otherwise).

:class:`ChangeListener` queues the ``procedureChange`` events with their arrival times, once
:func:`joined` has seen that the device's events reach this client; :func:`lifecycle` times one
Prepare and Start of a script with it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tango  # noqa: E402

from ska_oso_oet import run  # noqa: E402

#: Seconds a benchmark waits for an event (or for its event channel to join) before it fails.
TIMEOUT = 30.0


def iterations(description: str, full: int, argv: list[str] | None = None) -> int:
    """The benchmark's ``--quick`` flag (or ``BENCH_QUICK``): 5 iterations, else ``full``."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK"))
    )
    return 5 if parser.parse_args(argv).quick else full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Servers:
    tango_host: str
    proxies: list[tango.DeviceProxy]  # oet/executor/1.. in order
    processes: list[subprocess.Popen[bytes]]  # their servers, in the same order


@contextlib.contextmanager
def oet_servers(
    tmp: pathlib.Path,
    devices: list[Mapping[str, list[str]]],
    env: Mapping[str, str] | None = None,
) -> Iterator[Servers]:
    """The database and one server per entry of ``devices`` (its property overrides)."""
    port = free_port()
    tango_host = f"127.0.0.1:{port}"
    server_env = {**run.child_env(tango_host), **(env or {})}
    started: list[subprocess.Popen[bytes]] = []
    with open(tmp / "db.log", "wb") as db_log, open(tmp / "server.log", "wb") as log:
        try:
            started.append(run.start_database("127.0.0.1", port, tmp / "db.sqlite", log=db_log))
            config = run.load_config(repo=REPO, devices=len(devices))
            for n, overrides in enumerate(devices, start=1):
                classes = config["servers"][run.SERVER][str(n)][run.SERVER]
                props: dict[str, Any] = classes[f"oet/executor/{n}"]["properties"]
                props.update(
                    {
                        "ScriptRoots": [str(tmp)],
                        "AbortScript": [],
                        "PreloadModules": [],
                        "MaxRunning": ["1"],
                        **overrides,
                    }
                )
            run.register(config, tango_host)
            servers = Servers(tango_host, [], [])
            for n in range(1, len(devices) + 1):
                server = run.start_server(n, server_env, log=log)
                started.append(server)
                name = f"oet/executor/{n}"
                run.wait_for_device(name, 60, tango_host=tango_host, proc=server)
                servers.processes.append(server)
                servers.proxies.append(tango.DeviceProxy(f"tango://{tango_host}/{name}"))
            yield servers
        finally:
            for proc in reversed(started):
                run.stop_process(proc)


def joined(proxy: tango.DeviceProxy, timeout: float = TIMEOUT) -> None:
    """Return once events from the device reach this client; call it after subscribing.

    subscribe_event returns before the event channel (ZeroMQ) has surely joined, and an event
    pushed in between is lost. Writing loggingLevel with its own value pushes a change event
    of it; once one arrives, the events subscribed before it arrive too.
    """
    arrived = threading.Event()
    first = [True]

    def callback(event: Any) -> None:
        if first[0]:  # the value at subscription time, delivered during subscribe_event
            first[0] = False
            return
        arrived.set()

    event_id = proxy.subscribe_event("loggingLevel", tango.EventType.CHANGE_EVENT, callback)
    try:
        deadline = time.monotonic() + timeout
        while not arrived.is_set():  # the write meant to wake it may be lost too: write again
            if time.monotonic() > deadline:
                raise TimeoutError(f"no event of {proxy.dev_name()} reached this client")
            proxy.write_attribute("loggingLevel", proxy.read_attribute("loggingLevel").value)
            arrived.wait(0.2)
    finally:
        proxy.unsubscribe_event(event_id)


class ChangeListener:
    """procedureChange events: arrival time, the (id, state) they carry and their size in
    bytes, in a queue; subscribed, and joined, when it is made."""

    def __init__(self, proxy: tango.DeviceProxy, timeout: float = TIMEOUT) -> None:
        self.proxy = proxy
        self.timeout = timeout
        self.events: queue.SimpleQueue[tuple[float, int, str, int]] = queue.SimpleQueue()
        self._id = proxy.subscribe_event(
            "procedureChange", tango.EventType.CHANGE_EVENT, self._callback
        )
        joined(proxy)

    def _callback(self, event: Any) -> None:
        t = time.perf_counter()
        if event.err or not event.attr_value.value:
            return
        text = event.attr_value.value
        summary = json.loads(text)
        self.events.put((t, summary["id"], summary["state"], len(text.encode())))

    def until(self, pid: int, state: str) -> tuple[float, int]:
        """(perf_counter at arrival, bytes) of the event of procedure ``pid`` in ``state``;
        the events before it are consumed."""
        deadline = time.monotonic() + self.timeout
        while True:
            t, got_id, got_state, size = self.events.get(
                timeout=max(0.01, deadline - time.monotonic())
            )
            if got_id == pid and got_state == state:
                return t, size

    def close(self) -> None:
        self.proxy.unsubscribe_event(self._id)


def prepare(proxy: tango.DeviceProxy, events: ChangeListener, uri: str) -> int:
    """Prepare ``uri`` and wait until it is READY: its procedure ID."""
    pid = int(json.loads(proxy.Prepare(uri))["id"])
    events.until(pid, "READY")
    return pid


def lifecycle(
    proxy: tango.DeviceProxy, events: ChangeListener, uri: str
) -> tuple[float, float, int]:
    """Prepare, wait READY, Start: (ms to RUNNING, ms to COMPLETE, procedureChange bytes),
    each from just before StartProcedure to the arrival of the event with that state."""
    pid = prepare(proxy, events, uri)
    t0 = time.perf_counter()
    proxy.StartProcedure(pid)
    running, _ = events.until(pid, "RUNNING")
    complete, size = events.until(pid, "COMPLETE")
    return (running - t0) * 1000, (complete - t0) * 1000, size


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """The benchmark's table: metric, value, goal (and whether it was met)."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"{'metric':<{width}} | {'value':>12} | goal")
    print(f"{'-' * width}-+-{'-' * 12}-+-----")
    for metric, value, goal in rows:
        print(f"{metric:<{width}} | {value:>12} | {goal}")
