"""The catalogue of scripts: every ``.py`` file under the script roots, read without running it.

Each file is parsed with :mod:`ast`; nothing is imported or executed. An entry holds the
file's URI, its module docstring and, for each public function defined at module level, its
signature and docstring (:func:`list_scripts`). A file that cannot be parsed is listed with
its error. Symlinks are followed only while they stay inside a root; hidden directories and
``__pycache__`` are skipped; at most :data:`MAX_FILES` files are read and a file over
:data:`MAX_FILE_BYTES` is listed with an error instead of being parsed.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ska_oso_oet.procedure.scripts import is_within

MAX_FILES = 5000
MAX_FILE_BYTES = 1024 * 1024


def list_scripts(roots: Iterable[str]) -> list[dict[str, Any]]:
    """The catalogue of every root, sorted by URI; each file once."""
    seen: set[str] = set()
    entries = []
    real_roots = [os.path.realpath(r) for r in roots]
    for path in _files(real_roots):
        if path in seen:
            continue
        seen.add(path)
        entries.append(describe_file(path))
        if len(seen) >= MAX_FILES:
            break
    return sorted(entries, key=lambda e: e["script_uri"])


def _files(roots: list[str]) -> Iterator[str]:
    for root in roots:
        if not os.path.isdir(root):
            continue
        visited: set[str] = set()
        for folder, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in visited or not any(is_within(real, r) for r in roots):
                dirs[:] = []  # a loop, or a link out of the roots: not followed
                continue
            visited.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py") or name.startswith("."):
                    continue
                path = os.path.realpath(os.path.join(folder, name))
                if os.path.isfile(path) and any(is_within(path, r) for r in roots):
                    yield path


def describe_file(path: str) -> dict[str, Any]:
    """The catalogue entry of one file (read, never run)."""
    entry: dict[str, Any] = {"script_uri": f"file://{path}", "doc": None, "functions": []}
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ValueError(f"the file is larger than {MAX_FILE_BYTES} bytes: not read")
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except SyntaxError as exc:
        entry["error"] = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        return entry
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry
    entry["doc"] = ast.get_docstring(tree)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith(
            "_"
        ):
            function: dict[str, Any] = {
                "name": node.name,
                "signature": signature(node.args),
                "doc": ast.get_docstring(node),
            }
            if isinstance(node, ast.AsyncFunctionDef):
                function["async"] = True
            entry["functions"].append(function)
    return entry


def signature(args: ast.arguments) -> str:
    """A function's signature as Python would print it, e.g. ``(name='world', *args)``."""

    def one(arg: ast.arg, default: ast.expr | None = None, prefix: str = "") -> str:
        text = prefix + arg.arg
        if arg.annotation is not None:
            text += f": {ast.unparse(arg.annotation)}"
        if default is not None:
            text += (" = " if arg.annotation is not None else "=") + ast.unparse(default)
        return text

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    parts = [one(a, d) for a, d in zip(positional, defaults, strict=True)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if args.vararg is not None:
        parts.append(one(args.vararg, prefix="*"))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [one(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg is not None:
        parts.append(one(args.kwarg, prefix="**"))
    return f"({', '.join(parts)})"
