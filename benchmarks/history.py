"""The durable history, measured: Start -> COMPLETE with the history store on and off.

``make bench`` runs it; ``BENCH_QUICK=1`` (or ``--quick``) runs a few iterations only (CI).
It starts, on 127.0.0.1 and stopped by PID at the end, a PyDatabaseds (sqlite in a temporary
directory) and two ``ObservationExecutionTool`` servers side by side, registered from
``tango-db/oet.json``: ``oet/executor/1`` keeps its history (``KeepHistory`` true, the
default: every summary change is written to ``history.sqlite`` in its data folder) and
``oet/executor/2`` does not. Lifecycles of a trivial script alternate between the two; each
figure runs from just before ``StartProcedure`` to the arrival of the ``procedureChange``
event with the state, as a client sees it. The goal: with the store, within 1.1x of without.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import tango  # noqa: E402
from face import ChangeListener, free_port, lifecycle  # noqa: E402

from ska_oso_oet import run  # noqa: E402

GOAL_RATIO = 1.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK"))
    )
    args = parser.parse_args(argv)
    n = 5 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="oet-history-bench-") as folder:
        tmp = pathlib.Path(folder)
        (tmp / "trivial.py").write_text("def main():\n    pass\n")
        uri = f"file://{tmp / 'trivial.py'}"
        port = free_port()
        tango_host = f"127.0.0.1:{port}"
        env = {**run.child_env(tango_host), "OET_DATA_DIR": str(tmp / "data")}
        started: list[Any] = []
        with open(tmp / "db.log", "wb") as db_log, open(tmp / "server.log", "wb") as log:
            try:
                started.append(
                    run.start_database("127.0.0.1", port, tmp / "db.sqlite", log=db_log)
                )
                config = run.load_config(repo=REPO, devices=2)
                for instance, keep in (("1", "true"), ("2", "false")):
                    name = f"oet/executor/{instance}"
                    props = config["servers"]["ObservationExecutionTool"][instance][
                        "ObservationExecutionTool"
                    ][name]["properties"]
                    props.update(
                        {
                            "ScriptRoots": [str(tmp)],
                            "KeepHistory": [keep],
                            "MaxRunning": ["1"],
                            "AbortScript": [],
                            "PreloadModules": [],
                        }
                    )
                run.register(config, tango_host)
                proxies = []
                for instance in (1, 2):
                    server = run.start_server(instance, env, log=log)
                    started.append(server)
                    name = f"oet/executor/{instance}"
                    run.wait_for_device(name, 60, tango_host=tango_host, proc=server)
                    proxies.append(tango.DeviceProxy(f"tango://{tango_host}/{name}"))
                results = measure(proxies, uri, n)
                stored = tmp / "data" / "devices" / "oet.executor.1" / "history.sqlite"
                results["stored"] = stored.exists()
            finally:
                for proc in reversed(started):
                    run.stop_process(proc)
    print_table(results, n)
    return 0


def measure(proxies: list[tango.DeviceProxy], uri: str, n: int) -> dict[str, Any]:
    kept, plain = proxies
    listeners = [ChangeListener(kept), ChangeListener(plain)]
    samples: dict[str, list[float]] = {"on": [], "off": []}
    for proxy, listener in zip(proxies, listeners, strict=True):
        lifecycle(proxy, listener, uri)  # warm the spare workers and the caches
    for _ in range(n):
        for key, proxy, listener in (("on", kept, listeners[0]), ("off", plain, listeners[1])):
            _, complete, _ = lifecycle(proxy, listener, uri)
            samples[key].append(complete)
    return {key: statistics.median(values) for key, values in samples.items()}


def print_table(results: dict[str, Any], n: int) -> None:
    ratio = results["on"] / results["off"] if results["off"] else float("nan")
    met = "yes" if ratio <= GOAL_RATIO else "NO"
    rows = [
        (f"Start -> COMPLETE, history store off, median of {n}", f"{results['off']:.2f} ms", ""),
        (
            f"Start -> COMPLETE, history store on, median of {n}",
            f"{results['on']:.2f} ms",
            f"{ratio:.2f}x of off (goal <= {GOAL_RATIO}x): {met}",
        ),
        ("history.sqlite written", "yes" if results["stored"] else "NO", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nHistory that lasts ({time.strftime('%Y-%m-%d')}, n={n})")
    print(f"{'metric':<{width}} | {'value':>12} | goal")
    print(f"{'-' * width}-+-{'-' * 12}-+-----")
    for metric, value, goal in rows:
        print(f"{metric:<{width}} | {value:>12} | {goal}")


if __name__ == "__main__":
    sys.exit(main())
