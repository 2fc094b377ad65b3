"""Long running: works for a while, printing progress, so that it can be stopped.

    oet prepare file://$PWD/scripts/long_running.py
    oet start 1 --kwarg duration=30
    oet stop 1            # or: oet stop 1 --abort  (then runs the abort script)

``main`` sleeps in short steps for ``duration`` seconds (default 60) and returns. Stop raises
inside it (SIGTERM), so the ``finally`` block reports how far it got.
"""

import time


def main(duration=60, interval=0.5):
    """Work for ``duration`` seconds, printing progress every ``interval`` seconds."""
    start = time.monotonic()
    elapsed = 0.0
    try:
        while elapsed < duration:
            print(f"long_running: {elapsed:5.1f} of {duration} s", flush=True)
            time.sleep(min(interval, duration - elapsed))
            elapsed = time.monotonic() - start
        print(f"long_running: finished after {duration} s", flush=True)
    finally:
        elapsed = time.monotonic() - start
        if elapsed < duration:
            print(f"long_running: interrupted after {elapsed:.1f} s", flush=True)
