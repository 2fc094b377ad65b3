"""Hello: the smallest useful observing script.

Prepare it with the subarray it works on, then start it::

    oet prepare file://$PWD/scripts/hello.py --kwarg subarray_id=1
    oet start 1 --kwarg name='"Tango"'

``init`` runs while the procedure is prepared (state INITIALISING) and records the subarray;
``main`` runs on Start, prints a greeting and announces it on the pypubsub topic
``user.script.announce``, which reaches the OET server.
"""

from pubsub import pub

# what init recorded, for main
STATE = {"subarray_id": None}


def init(subarray_id=1, *args, **kwargs):
    """Record which subarray this script works on."""
    STATE["subarray_id"] = subarray_id
    print(f"hello: initialised for subarray {subarray_id}", flush=True)


def main(name="world", *args, **kwargs):
    """Print a greeting and announce it to the OET."""
    greeting = f"Hello, {name}, from subarray {STATE['subarray_id']}!"
    print(greeting, flush=True)
    pub.sendMessage("user.script.announce", msg_src="hello", msg=greeting)
