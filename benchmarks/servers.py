"""What the side-by-side benchmarks (face.py, history.py, output.py) share: their command line
and the servers they measure.

:func:`oet_servers` starts, on 127.0.0.1 and stopped by PID when it ends, a PyDatabaseds (sqlite
in ``tmp``) and one real ``ObservationExecutionTool`` server per entry of ``devices``: instance
``n`` serves ``oet/executor/<n>``, registered from ``tango-db/oet.json`` with the benchmark's
properties over the file's (``ScriptRoots`` the temporary folder, no abort script, no preloads,
``MaxRunning`` 1, unless the entry says otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tango  # noqa: E402

from ska_oso_oet import run  # noqa: E402


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


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """The benchmark's table: metric, value, goal (and whether it was met)."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"{'metric':<{width}} | {'value':>12} | goal")
    print(f"{'-' * width}-+-{'-' * 12}-+-----")
    for metric, value, goal in rows:
        print(f"{metric:<{width}} | {value:>12} | {goal}")
