"""Standard JSON only, in and out.

Python's :mod:`json` reads and writes ``NaN``, ``Infinity`` and ``-Infinity``, which are not
JSON: a browser's parser (so Taranta's) refuses a document that holds one. Here:

- :func:`loads` parses a request strictly: those words, numbers that overflow a float
  (``1e999``), integers longer than :data:`MAX_INT_DIGITS` digits, nesting deeper than
  :data:`MAX_DEPTH` and strings holding a lone surrogate (``"\\ud800"``: not a character, and
  no file name) are each a :class:`JSONInputError` (a ``ValueError``) that says which, as is
  any other parse failure, whatever its cause.
- :func:`dumps` writes standard JSON whatever it is given: a non-finite number becomes
  ``null``; an integer too long for Python to write as text becomes a string saying how many
  digits it has; a reference cycle, or nesting deeper than :data:`MAX_OUT_DEPTH`, becomes a
  string saying so. Values it cannot write go through ``default`` as with :func:`json.dumps`.

Imported by the worker side too, so it stays light: standard library only.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

#: Deepest nesting of arrays and objects a request may have.
MAX_DEPTH = 64
#: Longest integer a request may hold, in digits (Python's own limit for int <-> text).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
#: Nesting beyond this is written as a string (what is emitted comes from scripts too).
MAX_OUT_DEPTH = 200


class JSONInputError(ValueError):
    """A JSON text is not standard JSON the OET accepts; the message says why."""


def _constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number: send a finite number, or null")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(f"the number {text[:40]} is too large for a float")
    return value


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``; :class:`JSONInputError` unless it is standard JSON, nested
    at most :data:`MAX_DEPTH` deep."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float)
    except JSONInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise JSONInputError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # int()'s own limit
            raise JSONInputError(f"an integer has more than {MAX_INT_DIGITS} digits") from None
        raise JSONInputError(f"not valid JSON ({exc})") from None  # e.g. bytes, not UTF-8
    except TypeError as exc:
        raise JSONInputError(f"not valid JSON ({exc})") from None
    check(value)
    return value


def _null(_: str) -> None:
    return None


def _float_or_null(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def loads_finite(text: str | bytes) -> Any:
    """The value of JSON ``text`` as Python's :mod:`json` writes it (what a worker sends),
    with every non-finite number read as None: the server never holds one to emit. Raises
    what :func:`json.loads` raises."""
    return json.loads(text, parse_constant=_null, parse_float=_float_or_null)


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (:class:`JSONInputError`) a value nested deeper than ``max_depth``, holding a
    non-finite float or a string with a lone surrogate. Iterative: any depth is safe to
    check; about 60 ns an item."""
    if not isinstance(value, dict | list | tuple):
        _check_scalar(value)
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise JSONInputError(f"nested more than {max_depth} levels deep")
        if isinstance(item, dict):
            for key in item:
                if type(key) is str:
                    _check_text(key)
            children: Any = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is int or kind is bool or child is None:
                continue
            if kind is list or kind is dict or kind is tuple:
                stack.append((child, depth + 1))
            elif isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))
            else:
                _check_scalar(child)


def _check_scalar(value: Any) -> None:
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise JSONInputError(f"{value} is not a JSON number: send a finite number")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JSONInputError(
            f"a string holds {text[exc.start]!r}, half of a UTF-16 surrogate pair, which is not "
            "a character"
        ) from None


def dumps(value: Any, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """Standard JSON text of ``value`` (see the module's description)."""
    try:
        return json.dumps(value, default=default, allow_nan=False, **kwargs)
    except (ValueError, TypeError, RecursionError):
        pass  # something JSON cannot hold as it is (or a key it cannot): write a cleaned copy
    cleaned = _Cleaner(default).clean(value, 0)
    return json.dumps(cleaned, allow_nan=False, **kwargs)


def size(value: Any) -> int:
    """Length of the JSON text of ``value`` (what JSON cannot hold counted as its repr)."""
    return len(dumps(value, default=repr))


class _Cleaner:
    def __init__(self, default: Callable[[Any], Any] | None) -> None:
        self.default = default
        self.path: set[int] = set()  # ids of the containers being cleaned, for cycles

    def clean(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, str | bool):
            return value
        if isinstance(value, int):
            return _int_out(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if depth >= MAX_OUT_DEPTH:
            return f"<nested more than {MAX_OUT_DEPTH} levels deep>"
        if isinstance(value, dict | list | tuple):
            if id(value) in self.path:
                return "<reference cycle>"
            self.path.add(id(value))
            try:
                if isinstance(value, dict):
                    return {_key(k): self.clean(v, depth + 1) for k, v in value.items()}
                return [self.clean(v, depth + 1) for v in value]
            finally:
                self.path.discard(id(value))
        if self.default is None:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        return self.clean(self.default(value), depth + 1)


def _int_out(value: int) -> int | str:
    digits = int(abs(value).bit_length() * math.log10(2)) + 1
    if digits >= MAX_INT_DIGITS:
        return f"<integer of about {digits} digits>"
    return int(value)  # an int subclass (an IntEnum) as a plain int, as json writes it


def _key(key: Any) -> Any:
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    if key is None or isinstance(key, str | bool | float):
        return key
    if isinstance(key, int):
        return _int_out(key)
    return repr(key)
