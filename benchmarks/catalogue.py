"""How fast the catalogue of scripts is listed (``ListScripts``, ``oet scripts``).

    .venv/bin/python benchmarks/catalogue.py [--files 2000] [--repeat 5] [--no-device]

Writes ``--files`` scripts (about 60 lines each: a module docstring, an ``init`` that binds
``main`` with ``functools.partial``, five documented functions) into a temporary folder of
nested directories, then times, each ``--repeat`` times (the median is printed):

* a fresh :class:`Catalogue` listing them all (every file parsed);
* the same Catalogue listing them again, nothing changed (what the device does on a second
  ``ListScripts``: files are only stat'ed);
* the device's ``ListScripts`` as a Tango client sees it, first call and then again (a device
  in a DeviceTestContext on 127.0.0.1; ``--no-device`` skips it).

Everything it made is removed when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from ska_oso_oet.procedure import catalogue

SCRIPT = '''"""Observing script {i}: configure subarray, then scan.

It is prepared with the subarray it works on; main then takes the scan's parameters.
"""
import functools
import logging

LOG = logging.getLogger(__name__)


def main(*args, **kwargs):
    """Placeholder until init binds the subarray."""
    raise RuntimeError("init first")


def init(subarray_id: int, context=None):
    """Bind main to the subarray."""
    global main
    main = functools.partial(_main, subarray_id)
    LOG.info("bound to subarray %s", subarray_id)


def _main(subarray_id: int, configuration: str, scan_duration: float = 10.0, repeat: int = 1):
    """Configure the subarray with configuration, then scan repeat times."""
    for n in range(repeat):
        LOG.info("scan %d of %d on %s", n + 1, repeat, subarray_id)
        point(configuration, dwell=scan_duration)
'''
FUNCTION = '''

def step_{j}(target, offset: float = {j}.5, *, retries: int = 3, **options) -> bool:
    """Step {j} of the observation: point at target, offset and retry.

    Longer explanation of what this step does and what it expects.
    """
    for attempt in range(retries):
        if target:
            return True
    return False
'''


def make_tree(root: str, files: int) -> int:
    """``files`` scripts in folders of 20 under ``root``; their total lines."""
    lines = 0
    for i in range(files):
        folder = os.path.join(root, f"group{i // 200:02d}", f"set{i // 20 % 10}")
        os.makedirs(folder, exist_ok=True)
        text = SCRIPT.format(i=i) + "".join(FUNCTION.format(j=j) for j in range(5))
        text += "\n\ndef point(configuration, dwell):\n    pass\n"
        lines += text.count("\n")
        with open(os.path.join(folder, f"observe_{i:05d}.py"), "w") as f:
            f.write(text)
    return lines


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_times(root: str, repeat: int) -> tuple[float, float, int]:
    from tango.test_context import DeviceTestContext

    from ska_oso_oet.tango.device import ObservationExecutionTool

    os.environ.setdefault("ORBendPoint", "giop:tcp:127.0.0.1:")
    firsts = []
    again = []
    size = 0
    for _ in range(repeat):
        with DeviceTestContext(
            ObservationExecutionTool,
            device_name="oet/executor/1",
            properties={"ScriptRoots": [root]},
        ) as proxy:
            proxy.set_timeout_millis(60_000)
            start = time.perf_counter()
            size = len(proxy.ListScripts(""))
            firsts.append(time.perf_counter() - start)
            start = time.perf_counter()
            proxy.ListScripts("")
            again.append(time.perf_counter() - start)
    return statistics.median(firsts), statistics.median(again), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-device", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oet-catalogue-bench-") as root:
        lines = make_tree(root, args.files)
        kept = catalogue.Catalogue([root])
        entries = kept.list()
        assert len(entries) == args.files and not any("error" in e for e in entries)
        size = len(json.dumps(entries))
        rows = [
            ("fresh Catalogue: every file parsed", median_seconds(
                lambda: catalogue.Catalogue([root]).list(), args.repeat)),
            ("the same Catalogue again: nothing changed", median_seconds(
                kept.list, args.repeat)),
        ]  # fmt: skip
        if not args.no_device:
            first, again, size = device_times(root, args.repeat)
            rows += [("ListScripts, first call (Tango client)", first),
                     ("ListScripts again (Tango client)", again)]  # fmt: skip
    print(f"{args.files} files, {lines / args.files:.0f} lines each, {size / 1e6:.1f} MB of JSON;"
          f" median of {args.repeat}, {os.cpu_count()} CPUs")  # fmt: skip
    for label, seconds in rows:
        print(f"  {label:<45} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
