"""Script output, measured as a Tango client sees it: throughput, latency, and what a flood
costs the rest of the server.

``make bench`` runs it after the other benchmarks; ``BENCH_QUICK=1`` (or ``--quick``) runs a
few iterations only (CI). It starts, on 127.0.0.1 and stopped by PID at the end, a
PyDatabaseds (sqlite in a temporary directory) and the real ``ObservationExecutionTool 1``
server, registered from ``tango-db/oet.json`` with ``MaxRunning`` 2, ``ScriptRoots`` and
``DataDirectory`` in a temporary folder. Then:

* latency: a script prints a line holding ``time.time()`` every 100 ms; the client takes the
  arrival of the ``procedureOutput`` event that carries it (goal: median <= 60 ms, with the
  batching on);
* Start -> COMPLETE of a one-line script (``print`` then return), as a ``procedureChange``
  subscriber sees it, with nothing else running;
* the flood: a script writes lines as fast as it can for 2 s while a client subscribed to
  ``procedureOutput`` counts what the events deliver; captured lines per second (the
  procedure's last ``seq``) and delivered lines per second (lines in events; the rest were
  counted as ``skipped`` and stay in ``GetOutput``);
* Start -> COMPLETE of the one-line script again, while the flood runs (goal: within 1.5x of
  its figure without it);
* the server's RSS growth during the flood (goal: < 50 MB).

It prints one table and exits 0; a missed goal shows as ``NO``.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import psutil
import tango
from servers import ChangeListener, iterations, lifecycle, oet_servers, prepare

FLOOD_S = 2.0
LATENCY_GOAL_MS = 60.0
RATIO_GOAL = 1.5
RSS_GOAL_MB = 50.0

SCRIPTS = {
    "one_line.py": "def main():\n    print('done')\n",
    "ticks.py": (
        "import time\n\n"
        "def main(n=20, gap=0.1):\n"
        "    for i in range(n):\n"
        "        print(f'tick {i} {time.time()!r}', flush=True)\n"
        "        time.sleep(gap)\n"
    ),
    "flood.py": (
        "import sys, time\n\n"
        "def main(seconds=2.0):\n"
        "    write = sys.stdout.write\n"
        "    end = time.monotonic() + seconds\n"
        "    i = 0\n"
        "    while time.monotonic() < end:\n"
        "        for _ in range(200):\n"
        "            write(f'flood line {i} of a script that writes as fast as it can\\n')\n"
        "            i += 1\n"
        "    print(f'total {i}')\n"
    ),
}


class Subscriber:
    """procedureOutput events with their arrival times; the procedureChange events go to a
    :class:`ChangeListener` (``changes``), subscribed after them and joined."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.arrived = threading.Condition()
        self.outputs: list[tuple[float, float, dict[str, Any]]] = []  # (perf, wall, doc)
        self.proxy = proxy
        self._id = proxy.subscribe_event(
            "procedureOutput", tango.EventType.CHANGE_EVENT, self._output
        )
        self.changes = ChangeListener(proxy, timeout=60.0)

    def _output(self, event: Any) -> None:
        t, wall = time.perf_counter(), time.time()
        if event.err or not event.attr_value.value:
            return
        with self.arrived:
            self.outputs.append((t, wall, json.loads(event.attr_value.value)))
            self.arrived.notify_all()

    def until(self, pid: int, state: str) -> float:
        """perf_counter at the arrival of procedure ``pid``'s event in ``state``."""
        return self.changes.until(pid, state)[0]

    def output_of(self, pid: int) -> list[tuple[float, float, dict[str, Any]]]:
        with self.arrived:
            return [o for o in self.outputs if o[2].get("id") == pid]

    def wait_line(self, pid: int, prefix: str, timeout: float) -> bool:
        """Wait until an event of procedure ``pid`` has carried a line starting with
        ``prefix``; False if none had within ``timeout`` seconds."""

        def seen() -> bool:
            return any(
                line["text"].startswith(prefix)
                for _t, _w, doc in self.outputs
                if doc.get("id") == pid
                for line in doc["lines"]
            )

        with self.arrived:
            return self.arrived.wait_for(seen, timeout)

    def close(self) -> None:
        self.changes.close()
        self.proxy.unsubscribe_event(self._id)


def start_to_complete(proxy: tango.DeviceProxy, sub: Subscriber, uri: str) -> float:
    _running, complete, _size = lifecycle(proxy, sub.changes, uri)
    return complete


def measure(proxy: tango.DeviceProxy, server_pid: int, tmp: pathlib.Path, n: int) -> list[Any]:
    sub = Subscriber(proxy)
    uri = {name: f"file://{tmp / name}" for name in SCRIPTS}
    for _ in range(3):
        start_to_complete(proxy, sub, uri["one_line.py"])  # warm the spares and caches
    # latency of a print, one tick every 100 ms
    ticks = prepare(proxy, sub.changes, uri["ticks.py"])
    proxy.Start(json.dumps({"id": ticks, "run_args": {"kwargs": {"n": 2 * n}}}))
    sub.until(ticks, "COMPLETE")
    latencies = []
    for _t, wall, doc in sub.output_of(ticks):
        for line in doc["lines"]:
            if line["text"].startswith("tick "):
                latencies.append((wall - float(line["text"].split()[2])) * 1000)
    # Start -> COMPLETE, quiet
    quiet = [start_to_complete(proxy, sub, uri["one_line.py"]) for _ in range(n)]
    # the flood, and Start -> COMPLETE beside it
    proc = psutil.Process(server_pid)
    rss_before = proc.memory_info().rss
    rss_max = [rss_before]
    flooding = threading.Event()

    def sample_rss() -> None:
        while flooding.is_set():
            rss_max[0] = max(rss_max[0], proc.memory_info().rss)
            time.sleep(0.05)

    flood = prepare(proxy, sub.changes, uri["flood.py"])
    others = [prepare(proxy, sub.changes, uri["one_line.py"]) for _ in range(n)]
    flooding.set()
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    t_flood = time.perf_counter()
    proxy.Start(json.dumps({"id": flood, "run_args": {"kwargs": {"seconds": FLOOD_S}}}))
    sub.until(flood, "RUNNING")
    beside = []
    gap = (FLOOD_S - 0.4) / max(n, 1)
    for pid in others:
        if time.perf_counter() - t_flood > FLOOD_S - 0.2:
            break
        t0 = time.perf_counter()
        proxy.StartProcedure(pid)
        beside.append((sub.until(pid, "COMPLETE") - t0) * 1000)
        time.sleep(max(0.0, gap - (time.perf_counter() - t0)))
    t_end = sub.until(flood, "COMPLETE")
    flooding.clear()
    sampler.join()
    sub.wait_line(flood, "total ", 10.0)  # the last batch may follow the final state
    batches = sub.output_of(flood)
    delivered = sum(len(doc["lines"]) for _t, _w, doc in batches)
    skipped = sum(doc.get("skipped", 0) for _t, _w, doc in batches)
    stored = json.loads(proxy.GetOutput(json.dumps({"id": flood, "since": 0})))
    captured = delivered + skipped
    last = [line for _t, _w, doc in batches for line in doc["lines"]][-1]
    total = int(last["text"].split()[-1]) if last["text"].startswith("total") else None
    span = t_end - t_flood
    ratio = statistics.median(beside) / statistics.median(quiet)
    sub.close()
    return [
        ("print -> procedureOutput event, median", f"{statistics.median(latencies):.1f} ms",
         f"<= {LATENCY_GOAL_MS:.0f} ms: "
         f"{'yes' if statistics.median(latencies) <= LATENCY_GOAL_MS else 'NO'}",
         len(latencies)),
        ("print -> procedureOutput event, p95",
         f"{statistics.quantiles(latencies, n=20)[-1]:.1f} ms", "", len(latencies)),
        ("flood: lines captured per second", f"{captured / FLOOD_S:,.0f}/s",
         f"{captured:,} lines in {FLOOD_S:g} s"
         + ("" if total is None or total + 1 == captured else f" (script wrote {total + 1:,})"),
         1),
        ("flood: lines delivered in events per second", f"{delivered / FLOOD_S:,.0f}/s",
         f"{len(batches)} events in {span:.2f} s; {skipped:,} lines skipped (in GetOutput); "
         f"GetOutput dropped {stored['dropped']:,}", 1),
        ("Start -> COMPLETE, nothing else running", f"{statistics.median(quiet):.1f} ms", "",
         len(quiet)),
        ("Start -> COMPLETE during the flood", f"{statistics.median(beside):.1f} ms",
         f"{ratio:.2f}x of quiet (goal <= {RATIO_GOAL}x): "
         f"{'yes' if ratio <= RATIO_GOAL else 'NO'}",
         len(beside)),
        ("server RSS growth during the flood", f"{(rss_max[0] - rss_before) / 2**20:.1f} MB",
         f"< {RSS_GOAL_MB:.0f} MB: "
         f"{'yes' if (rss_max[0] - rss_before) / 2**20 < RSS_GOAL_MB else 'NO'}", 1),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    n = iterations(__doc__ or "", 20, argv)
    with tempfile.TemporaryDirectory(prefix="oet-output-bench-") as folder:
        tmp = pathlib.Path(folder)
        for name, text in SCRIPTS.items():
            (tmp / name).write_text(text)
        devices = [{"DataDirectory": [str(tmp / "data")], "MaxRunning": ["2"]}]
        with oet_servers(tmp, devices, env={"OET_REST_PORT": "0"}) as servers:
            rows = measure(servers.proxies[0], servers.processes[0].pid, tmp, n)
    width = max(len(r[0]) for r in rows)
    print(f"\nScript output ({time.strftime('%Y-%m-%d')}, n={n}, flood {FLOOD_S:g} s)")
    print(f"{'metric':<{width}} | {'n':>3} | {'value':>12} | goal / note")
    print(f"{'-' * width}-+-----+-{'-' * 12}-+------------")
    for metric, value, goal, count in rows:
        print(f"{metric:<{width}} | {count:>3} | {value:>12} | {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
