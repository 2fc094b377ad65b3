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

import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tango
from servers import ChangeListener, iterations, lifecycle, oet_servers, print_table

GOAL_RATIO = 1.1


def main(argv: list[str] | None = None) -> int:
    n = iterations(__doc__ or "", 40, argv)
    with tempfile.TemporaryDirectory(prefix="oet-history-bench-") as folder:
        tmp = pathlib.Path(folder)
        (tmp / "trivial.py").write_text("def main():\n    pass\n")
        devices = [{"KeepHistory": ["true"]}, {"KeepHistory": ["false"]}]
        with oet_servers(tmp, devices, env={"OET_DATA_DIR": str(tmp / "data")}) as servers:
            results = measure(servers.proxies, f"file://{tmp / 'trivial.py'}", n)
        stored = tmp / "data" / "devices" / "oet.executor.1" / "history.sqlite"
        results["stored"] = stored.exists()
    report(results, n)
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


def report(results: dict[str, Any], n: int) -> None:
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
    print_table(f"History that lasts ({time.strftime('%Y-%m-%d')}, n={n})", rows)


if __name__ == "__main__":
    sys.exit(main())
