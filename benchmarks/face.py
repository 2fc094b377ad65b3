"""The operator's face, measured: event frame sizes and latencies with a long history.

``make bench`` runs it after ``lifecycle.py``; ``BENCH_QUICK=1`` (or ``--quick``) runs a few
iterations only (CI). It starts, on 127.0.0.1 and stopped by PID at the end, a PyDatabaseds
(sqlite in a temporary directory) and the real ``ObservationExecutionTool 1`` server,
registered from ``tango-db/oet.json`` with ``HistoryLength`` 150 and ``ScriptRoots`` a
temporary folder of scripts. Then, side by side in one run:

* the size of the ``procedureSummaries`` and ``procedureChange`` event values when the device
  holds 0 ended procedures and when it holds 100;
* Start -> RUNNING and Start -> COMPLETE of a trivial script as a ``procedureChange``
  subscriber sees them (from just before the Start call to the arrival of the change event
  with that state), with an empty history and with 100 ended procedures held. The goal: the
  figures with 100 held within 1.2x of those with none.

It prints one table and exits 0; a missed goal shows as ``NO``.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tango
from servers import ChangeListener, iterations, lifecycle, oet_servers, print_table

HELD = 100
GOAL_RATIO = 1.2


def summaries_size(proxy: tango.DeviceProxy) -> int:
    return len(proxy.procedureSummaries.encode())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    n = iterations(__doc__ or "", 30, argv)
    with tempfile.TemporaryDirectory(prefix="oet-face-bench-") as folder:
        tmp = pathlib.Path(folder)
        (tmp / "trivial.py").write_text("def main():\n    pass\n")
        # two servers side by side: oet/executor/1 keeps no ended procedure, /2 keeps 100
        devices = [{"HistoryLength": ["0"]}, {"HistoryLength": ["150"]}]
        with oet_servers(tmp, devices) as servers:
            rows = measure(servers.proxies, f"file://{tmp / 'trivial.py'}", n)
    report(rows, n)
    return 0


def measure(proxies: list[tango.DeviceProxy], uri: str, n: int) -> dict[int, dict[str, Any]]:
    """Alternate lifecycles on the empty device and the one holding HELD ended procedures."""
    empty, full = proxies
    listeners = {0: ChangeListener(empty), HELD: ChangeListener(full)}
    for held, proxy in ((0, empty), (HELD, full)):
        lifecycle(proxy, listeners[held], uri)  # warm the spare workers and the caches
    while len(json.loads(full.Summarise(""))) < HELD:
        lifecycle(full, listeners[HELD], uri)
    samples: dict[int, dict[str, list[float]]] = {
        held: {"running": [], "complete": []} for held in listeners
    }
    sizes = {held: 0 for held in listeners}
    for _ in range(n):
        for held, proxy in ((0, empty), (HELD, full)):
            r, c, sizes[held] = lifecycle(proxy, listeners[held], uri)
            samples[held]["running"].append(r)
            samples[held]["complete"].append(c)
    assert len(json.loads(empty.Summarise(""))) == 0, "the empty device kept a procedure"
    return {
        held: {
            "summaries_bytes": summaries_size(proxy),
            "change_bytes": sizes[held],
            "running": median(samples[held]["running"]),
            "complete": median(samples[held]["complete"]),
        }
        for held, proxy in ((0, empty), (HELD, full))
    }


def report(results: dict[int, dict[str, Any]], n: int) -> None:
    empty, full = results[0], results[HELD]
    rows = [
        ("procedureSummaries event, 0 ended held", f"{empty['summaries_bytes']} B", ""),
        (f"procedureSummaries event, {HELD} ended held", f"{full['summaries_bytes']} B", ""),
        ("procedureChange event, 0 ended held", f"{empty['change_bytes']} B", ""),
        (f"procedureChange event, {HELD} ended held", f"{full['change_bytes']} B",
         "same as with 0" if full["change_bytes"] <= empty["change_bytes"] + 64 else "GREW"),
    ]  # fmt: skip
    for key, label in (("running", "Start -> RUNNING"), ("complete", "Start -> COMPLETE")):
        ratio = full[key] / empty[key] if empty[key] else float("nan")
        met = "yes" if ratio <= GOAL_RATIO else "NO"
        rows.append(
            (f"{label} (procedureChange), 0 held, median of {n}", f"{empty[key]:.2f} ms", "")
        )
        rows.append(
            (
                f"{label} (procedureChange), {HELD} held, median of {n}",
                f"{full[key]:.2f} ms",
                f"{ratio:.2f}x of 0 held (goal <= {GOAL_RATIO}x): {met}",
            )
        )
    print_table(f"Operator face ({time.strftime('%Y-%m-%d')}, n={n})", rows)


if __name__ == "__main__":
    sys.exit(main())
