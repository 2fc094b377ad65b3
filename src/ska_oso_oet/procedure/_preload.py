"""Imported by the fork server only, before it forks any worker.

It imports what every worker needs, then moves every object made so far out of the garbage
collector's reach (``gc.freeze``): a forked worker then does not touch, and so does not copy,
the memory pages it shares with the fork server.
"""

import gc

# the worker, and what a git script's environment needs
import ska_oso_oet.procedure.environment
import ska_oso_oet.procedure.worker  # noqa: F401

gc.freeze()
