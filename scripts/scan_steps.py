"""Scan steps: a scan in steps that an operator can pause between steps, with its progress.

    oet prepare scripts/scan_steps.py --kwarg subarray_id=1
    oet start 1 --kwarg steps=20
    oet pause 1           # PAUSED once the current step is done (at the next checkpoint)
    oet describe 1        # progress: 30% step 7 of 20: slewing to offset (0.6, 0.0)
    oet resume 1          # RUNNING again, from the next step
    oet stop 1 --abort    # also while PAUSED: the stop interrupts the pause at once

Each step "slews" to an offset and "dwells" there (both only sleep here). Between steps the
script calls ``checkpoint()``: the one place where a pause may happen, so that a pause never
leaves a step half done. ``report_progress()`` tells the operator how far it is, and what
``main`` returns (the offsets observed) becomes the procedure's ``result``. A script that
never calls ``checkpoint()`` cannot be paused: a Pause stays pending and it runs on.
"""

import time

from ska_oso_oet.scripting import checkpoint, report_progress

SUBARRAY_ID = None


def init(subarray_id=1):
    """Record the subarray this scan uses."""
    global SUBARRAY_ID
    SUBARRAY_ID = subarray_id


def main(steps=10, step_size=0.1, dwell=1.0, context=None):
    """Scan ``steps`` offsets ``step_size`` degrees apart, dwelling ``dwell`` s on each."""
    observed = []
    for i in range(steps):
        checkpoint(f"before step {i + 1}")  # a pause waits here, between two whole steps
        offset = (round(i * step_size, 6), 0.0)
        report_progress(i / steps, f"step {i + 1} of {steps}: slewing to offset {offset}")
        time.sleep(dwell / 10)  # the slew
        report_progress((i + 0.5) / steps, f"step {i + 1} of {steps}: dwelling on {offset}")
        time.sleep(dwell)
        observed.append(offset)
    report_progress(1.0, f"done: {steps} steps")
    return {
        "procedure_id": context.procedure_id if context else None,
        "subarray_id": SUBARRAY_ID,
        "offsets": observed,
    }
