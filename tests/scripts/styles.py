"""Callables in the styles SKA's scripting library uses; each main-like call records its
arguments in the file named by ``marker``."""

import functools
import json
from math import sqrt as root  # imported: refused unless listed in __all__
from subprocess import run  # imported: never callable from a Start

__all__ = ["root"]  # the other callables are allowed because the script made them

_subarray = None


def _record(marker, **values):
    with open(marker, "w") as f:
        json.dump(values, f)


def _main(marker, name="world", *, subarray_id):
    _record(marker, name=name, subarray_id=subarray_id)


def init(subarray_id, context=None):
    global main
    main = functools.partial(_main, subarray_id=subarray_id)


class Observer:
    def __call__(self, marker, target):
        _record(marker, target=target)

    def scan(self, marker, n=1):
        _record(marker, n=n)


observe = Observer()
scan = observe.scan


async def measure(marker, seconds=0.0):
    _record(marker, seconds=seconds)


def bare(marker):
    _record(marker, bare=True)


def with_context(marker, context):
    _record(marker, qa=context.wait_for_qa_ready)


_ = run  # keep the import
