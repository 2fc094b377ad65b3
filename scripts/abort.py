"""The abort script: what the OET runs after ``Stop`` with ``run_abort`` (``oet stop ID --abort``).

The device runs it as a procedure of its own (the ``AbortScript`` device property points here).
A real one would abort the subarray's current observation; this one prints what it would do.
"""

# what init recorded, for main
STATE = {"subarray_id": None}


def init(subarray_id=None, *args, **kwargs):
    """Record which subarray to abort (None: the one this OET controls)."""
    STATE["subarray_id"] = subarray_id


def main(*args, **kwargs):
    """Abort the subarray."""
    subarray_id = STATE["subarray_id"]
    target = "the subarray" if subarray_id is None else f"subarray {subarray_id}"
    print(f"abort: aborting {target}", flush=True)
