"""Which names of a loaded script a Start may call, and whether a call's arguments fit.

The rule (the contract's): the callable the module holds under the name when Start arrives,
if the script made it: a function or ``async def`` it defines, a ``functools.partial`` (or
another wrapper with ``__wrapped__`` or ``func``) of one of them, an instance of a class it
defines, or a bound method of one. A name listed in the module's ``__all__`` is allowed
whatever it is. Nothing else: a function the script only imported (``from subprocess import
run``) is refused, so that a client cannot call library code with arguments of its choosing.

The worker describes each allowed callable's signature as plain data (:func:`describe`); the
server rebuilds it and binds a Start's arguments to it (:func:`check_call`) before anything
runs. Imported by every worker, so it stays light: standard library only.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

#: A signature as data: its text, and each parameter as [name, kind name, has a default].
SignatureSpec = dict[str, Any]

_KINDS = {kind.name: kind for kind in inspect._ParameterKind}
_MAX_UNWRAP = 20
_MAX_PARAMS = 256


def _exported(module: types.ModuleType) -> set[str]:
    names = getattr(module, "__all__", None)
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return set(names)
    return set()


def made_by(module: types.ModuleType, value: Any) -> bool:
    """True when ``value`` is a callable the script itself made (see the module's rule)."""
    home = module.__name__
    for _ in range(_MAX_UNWRAP):
        if isinstance(value, type):
            return False  # a class: calling it would only make an instance
        if isinstance(value, types.FunctionType):
            return value.__module__ == home
        if isinstance(value, types.MethodType):
            owner = value.__self__
            return (owner if isinstance(owner, type) else type(owner)).__module__ == home
        if isinstance(value, functools.partial):
            value = value.func
            continue
        inner = getattr(value, "__wrapped__", None)
        if inner is None:
            return type(value).__module__ == home  # an instance of a class it defines
        value = inner
    return False


def allowed(module: types.ModuleType, name: str) -> Callable[..., Any] | None:
    """What a Start of ``name`` would call now, or None if that is not allowed."""
    value = vars(module).get(name)
    if not callable(value):
        return None
    if name in _exported(module) or (not name.startswith("_") and made_by(module, value)):
        return value
    return None


def allowed_names(module: types.ModuleType) -> list[str]:
    return sorted(name for name in list(vars(module)) if allowed(module, name) is not None)


def describe(fn: Callable[..., Any]) -> SignatureSpec | None:
    """``fn``'s signature as data, or None when it cannot be read (some C callables)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = [
        [p.name, p.kind.name, p.default is not inspect.Parameter.empty]
        for p in sig.parameters.values()
    ]
    return {"text": str(sig), "params": params}


def valid_spec(spec: Any) -> bool:
    """True when ``spec`` (from a worker: untrusted) is a well-formed :data:`SignatureSpec`."""
    if spec is None:
        return True
    if not isinstance(spec, dict) or set(spec) != {"text", "params"}:
        return False
    params = spec["params"]
    if not isinstance(spec["text"], str) or not isinstance(params, list):
        return False
    if len(params) > _MAX_PARAMS:
        return False
    return all(
        isinstance(p, list)
        and len(p) == 3
        and isinstance(p[0], str)
        and p[0].isidentifier()
        and p[1] in _KINDS
        and isinstance(p[2], bool)
        for p in params
    )


class _Default:
    def __repr__(self) -> str:
        return "..."


def check_call(spec: SignatureSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise TypeError, naming the parameter, unless ``args`` and ``kwargs`` bind to the
    signature. A ``context`` parameter is filled in by the worker, so it need not be given."""
    try:
        sig = inspect.Signature(
            [
                inspect.Parameter(
                    name,
                    _KINDS[kind],
                    default=_Default() if has_default else inspect.Parameter.empty,
                )
                for name, kind, has_default in spec["params"]
            ]
        )
    except ValueError:
        return  # not a signature Python could have made: let the call itself decide
    context = sig.parameters.get("context")
    if context is not None and context.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        kwargs = {"context": None, **kwargs}
    sig.bind(*args, **kwargs)
