"""The catalogue of scripts: every ``.py`` file under the script roots, read without running it.

Each file is parsed with :mod:`ast`; nothing is imported or executed. An entry holds the
file's URI, its module docstring (None when it has none) and the callables a ``Start`` could
name, in source order, each with its signature (rendered from the source as
:func:`inspect.signature` shows it: defaults and annotations as written, ``/`` and ``*``) and
docstring; ``"async": true`` marks an ``async def``::

    [{"script_uri": "file:///abs/x.py", "doc": "...",
      "functions": [{"name": "main", "signature": "(name='world', *args, **kwargs)",
                     "doc": "..."}]}]

Which callables: the public ones (no leading ``_``, unless the module's literal ``__all__``
lists the name) that the source shows the script makes:

- ``def`` and ``async def`` at module level (also inside a top-level ``if``/``try``/``with``);
- ``NAME = functools.partial(F, ...)`` of one of them, at module level or in ``init`` with
  ``global NAME`` (the SKA pattern ``main = functools.partial(_main, subarray_id)``, which
  replaces a placeholder ``main``): the parameters left after the bound arguments, as
  ``inspect.signature`` gives them for a partial (a bound value shown as its source text:
  ``subarray_id=subarray_id``), with ``"kind": "partial"``, ``"wraps"`` (F's name) and
  ``"bound_in"`` (``"init"`` or ``"module"``);
- ``NAME = C(...)`` of a class ``C`` of the script that defines ``__call__``: that method's
  signature without ``self``, with ``"kind": "instance"`` and ``"wraps"`` (C's name); and
  ``NAME = instance.method`` of such an instance: ``"kind": "method"``, ``"wraps": "C.method"``;
- a name the literal ``__all__`` lists that is none of these (Start allows it whatever it is):
  a class of the script (``"kind": "class"``, the signature of its ``__init__``), or an
  imported name (``"kind": "imported"``, signature ``(...)``); other names are not listed;
- a name that ``init`` rebinds to anything else: signature ``(...)``, ``"kind": "unknown"``
  (only the running script knows it).

The last binding wins, init's after the module's. Not listed unless ``__all__`` names them:
classes (Start refuses to call a class otherwise) and what the script only imported (Start
refuses it). Never seen: what a script makes by other means (``setattr``, ``globals()``),
and what a decorator does to a signature.

Files and bounds:

- Each root is resolved (``os.path.realpath``) and each file is listed once, under its real
  path; a symlink (file or directory) is followed only when its target lies inside a root,
  and each real directory is walked once, so a symlink loop ends; a ``.py`` link inside the
  roots that leads nowhere is listed under its own name with the error.
- Hidden files and directories (``.name``) and ``__pycache__`` are skipped; a root that does
  not exist gives nothing.
- A file that cannot be described is listed with ``"error"`` (``"SyntaxError: invalid syntax
  (line 3)"``, undecodable bytes, over :data:`MAX_FILE_BYTES`, not a regular file,
  unreadable), ``"doc": None`` and no functions. Nothing but a regular file is ever opened.
- At most :data:`MAX_FILES` files are listed and :data:`MAX_ENTRIES` directory entries
  examined; when a bound stops the listing, an entry whose URI is the root's (ending in
  ``/``) says so in its ``"error"``. A docstring is cut at :data:`MAX_DOC` characters, a file
  lists at most :data:`MAX_FUNCTIONS` callables, and once the listing's text passes
  :data:`MAX_TEXT` characters further files are listed with an error instead.
- Sorted by URI; the same tree gives the same listing. A :class:`Catalogue` keeps what it
  parsed and parses again only the files whose size, times or inode changed.

It uses the OET's one containment check (:func:`.scripts.is_within`) and the standard library.
"""

from __future__ import annotations

import ast
import os
import stat
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ska_oso_oet.procedure.scripts import is_within

MAX_FILES = 5000
MAX_ENTRIES = 200_000
MAX_FILE_BYTES = 1024 * 1024
MAX_DOC = 4000
MAX_FUNCTIONS = 200
MAX_TEXT = 16 * 1024 * 1024
MAX_SIGNATURE = 2000

POSITIONAL_ONLY = "POSITIONAL_ONLY"
POSITIONAL_OR_KEYWORD = "POSITIONAL_OR_KEYWORD"
VAR_POSITIONAL = "VAR_POSITIONAL"
KEYWORD_ONLY = "KEYWORD_ONLY"
VAR_KEYWORD = "VAR_KEYWORD"

Entry = dict[str, Any]


# -- signatures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter as the source gives it; annotation and default as source text."""

    name: str
    kind: str
    annotation: str | None = None
    default: str | None = None

    def render(self) -> str:
        text = {VAR_POSITIONAL: "*", VAR_KEYWORD: "**"}.get(self.kind, "") + self.name
        if self.annotation is not None:
            text += f": {self.annotation}"
        if self.default is not None:
            text += (" = " if self.annotation is not None else "=") + self.default
        return text


def render_signature(params: Iterable[Param], returns: str | None = None) -> str:
    """The text ``str(inspect.Signature)`` gives: ``/`` and ``*`` where they belong."""
    parts: list[str] = []
    slash_pending = False
    star_needed = True
    for p in params:
        if p.kind == POSITIONAL_ONLY:
            slash_pending = True
        elif slash_pending:
            parts.append("/")
            slash_pending = False
        if p.kind == VAR_POSITIONAL:
            star_needed = False
        elif p.kind == KEYWORD_ONLY and star_needed:
            parts.append("*")
            star_needed = False
        parts.append(p.render())
    if slash_pending:
        parts.append("/")
    text = f"({', '.join(parts)})"
    return text if returns is None else f"{text} -> {returns}"


def _source(node: ast.AST | None) -> str | None:
    """``node`` as source text; the common simple nodes without ``ast.unparse``'s cost."""
    if node is None:
        return None
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and type(node.value) in (int, bool, type(None)):
        return repr(node.value)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ast.unparse(node)


def params_of(args: ast.arguments) -> list[Param]:
    """The parameters of a ``def`` in order, defaults aligned as Python aligns them."""
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    n_posonly = len(args.posonlyargs)
    params = [
        Param(
            a.arg,
            POSITIONAL_ONLY if i < n_posonly else POSITIONAL_OR_KEYWORD,
            _source(a.annotation),
            _source(d),
        )
        for i, (a, d) in enumerate(zip(positional, defaults, strict=True))
    ]
    if args.vararg is not None:
        params.append(Param(args.vararg.arg, VAR_POSITIONAL, _source(args.vararg.annotation)))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(Param(a.arg, KEYWORD_ONLY, _source(a.annotation), _source(d)))
    if args.kwarg is not None:
        params.append(Param(args.kwarg.arg, VAR_KEYWORD, _source(args.kwarg.annotation)))
    return params


def signature(args: ast.arguments) -> str:
    """A function's signature as Python would print it, e.g. ``(name='world', *args)``."""
    return render_signature(params_of(args))


class CannotBind(ValueError):
    """A partial's arguments do not fit the function it wraps."""


def partial_params(params: list[Param], n_args: int, keywords: dict[str, str]) -> list[Param]:
    """The parameters left by ``functools.partial(f, <n_args positional>, **keywords)`` of a
    function with ``params``, as :func:`inspect.signature` computes them: keyword-bound
    parameters become keyword-only with the bound value (source text) as their default, and
    so do the positional-or-keyword parameters after them. CannotBind when the call cannot
    bind.
    """
    bound: set[str] = set()
    left = n_args
    for p in params:
        if left == 0:
            break
        if p.kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD):
            bound.add(p.name)
            left -= 1
        elif p.kind == VAR_POSITIONAL:
            bound.add(p.name)
            left = 0
    if left:
        raise CannotBind("too many positional arguments")
    by_name = {p.name: p for p in params}
    var_keyword = next((p.name for p in params if p.kind == VAR_KEYWORD), None)
    for name in keywords:
        named = by_name.get(name)
        if named is not None and named.kind in (POSITIONAL_OR_KEYWORD, KEYWORD_ONLY):
            if name in bound:
                raise CannotBind(f"multiple values for argument {name!r}")
            bound.add(name)
        elif var_keyword is not None:
            bound.add(var_keyword)
        else:
            raise CannotBind(f"unexpected keyword argument {name!r}")

    new: dict[str, Param] = {p.name: p for p in params}
    to_keyword_only = False
    for p in params:
        if p.name in bound:
            if p.kind == POSITIONAL_ONLY:
                del new[p.name]
                continue
            if p.kind == POSITIONAL_OR_KEYWORD:
                if p.name not in keywords:
                    del new[p.name]
                    continue
                to_keyword_only = True
                new[p.name] = replace(p, default=keywords[p.name])
            elif p.kind == KEYWORD_ONLY:
                new[p.name] = replace(p, default=keywords[p.name])
        if to_keyword_only:
            if p.kind == POSITIONAL_OR_KEYWORD:
                new[p.name] = replace(new.pop(p.name), kind=KEYWORD_ONLY)
            elif p.kind in (KEYWORD_ONLY, VAR_KEYWORD):
                new[p.name] = new.pop(p.name)
            elif p.kind == VAR_POSITIONAL:
                del new[p.name]
    return list(new.values())


# -- one module --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Callable:
    params: tuple[Param, ...] | None  # None: not known from the source
    returns: str | None
    doc: str | None
    is_async: bool
    kind: str = "function"
    wraps: str | None = None
    bound_in: str | None = None

    def entry(self, name: str) -> Entry:
        text = "(...)" if self.params is None else render_signature(self.params, self.returns)
        out: Entry = {
            "name": name,
            "signature": cut(text, MAX_SIGNATURE),
            "doc": _cut_doc(self.doc),
        }
        if self.is_async:
            out["async"] = True
        if self.kind != "function":
            out["kind"] = self.kind
        if self.wraps is not None:
            out["wraps"] = self.wraps
        if self.bound_in is not None:
            out["bound_in"] = self.bound_in
        return out


def cut(text: str, limit: int) -> str:
    """``text``, cut at ``limit`` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [... {len(text) - limit} more characters]"


def _cut_doc(doc: str | None) -> str | None:
    return None if doc is None else cut(doc, MAX_DOC)


def _flat(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a block and of the if/try/with/for/while/match blocks in it, in
    source order; not the bodies of functions or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If | ast.For | ast.AsyncFor | ast.While):
            yield from _flat(stmt.body)
            yield from _flat(stmt.orelse)
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            yield from _flat(stmt.body)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _flat(stmt.body)
            for handler in stmt.handlers:
                yield from _flat(handler.body)
            yield from _flat(stmt.orelse)
            yield from _flat(stmt.finalbody)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                yield from _flat(case.body)


def _is_partial(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "partial") or (
        isinstance(func, ast.Attribute) and func.attr == "partial"
    )


class _Module:
    """What one parsed module makes: its callables by name (first binding's order), its
    classes, what it imported, the names its ``__all__`` lists."""

    def __init__(self, tree: ast.Module) -> None:
        self.callables: dict[str, _Callable] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.imported: set[str] = set()
        self.exported: list[str] = []
        init: ast.FunctionDef | ast.AsyncFunctionDef | None = None
        for stmt in _flat(tree.body):
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self._bind(stmt.name, self._function(stmt))
                if stmt.name == "init":
                    init = stmt
            elif isinstance(stmt, ast.ClassDef):
                self.classes[stmt.name] = stmt
                self.callables.pop(stmt.name, None)
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    name = alias.asname or alias.name.split(".")[0]
                    self.imported.add(name)
                    self.callables.pop(name, None)
            else:
                self._assignment(stmt, "module", None)
        if init is not None:
            declared = {
                name for s in _flat(init.body) if isinstance(s, ast.Global) for name in s.names
            }
            for stmt in _flat(init.body):
                self._assignment(stmt, "init", declared)

    def _bind(self, name: str, made: _Callable) -> None:
        self.callables[name] = made  # a name bound again keeps its place

    @staticmethod
    def _function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> _Callable:
        return _Callable(
            tuple(params_of(node.args)),
            _source(node.returns),
            ast.get_docstring(node),
            isinstance(node, ast.AsyncFunctionDef),
        )

    def _assignment(self, stmt: ast.stmt, where: str, declared: set[str] | None) -> None:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            return
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if declared is not None:
            names = [n for n in names if n in declared]
        if where == "module" and "__all__" in names and isinstance(value, ast.List | ast.Tuple):
            self.exported = [
                e.value
                for e in value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
        for name in names:
            made = self._made(value, where)
            if made is not None:
                self._bind(name, made)
            elif where == "init":
                self._bind(name, _Callable(None, None, None, False, "unknown", bound_in="init"))
            else:
                self.callables.pop(name, None)

    def _made(self, value: ast.expr, where: str) -> _Callable | None:
        """What ``NAME = value`` binds when the source shows a callable the script made."""
        if isinstance(value, ast.Name):  # an alias: main = _main
            return self.callables.get(value.id)
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            owner = self.callables.get(value.value.id)  # scan = observer.scan
            if owner is not None and owner.kind == "instance" and owner.wraps in self.classes:
                made = self._method(self.classes[owner.wraps], value.attr, "method")
                return None if made is None else replace(made, bound_in=where)
            return None
        if not isinstance(value, ast.Call):
            return None
        if _is_partial(value.func) and value.args:
            return self._partial(value, where)
        if isinstance(value.func, ast.Name) and value.func.id in self.classes:
            made = self._method(self.classes[value.func.id], "__call__", "instance")
            return None if made is None else replace(made, bound_in=where)
        return None

    def _partial(self, call: ast.Call, where: str) -> _Callable | None:
        target, *rest = call.args
        if not isinstance(target, ast.Name):
            return None
        wrapped = self.callables.get(target.id)
        if wrapped is None or wrapped.kind == "unknown":
            return None  # a partial of something the script did not make: Start refuses it
        params: tuple[Param, ...] | None = None
        plain = not any(isinstance(a, ast.Starred) for a in rest) and all(
            k.arg is not None for k in call.keywords
        )
        if plain and wrapped.params is not None:
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords if k.arg is not None}
            try:
                params = tuple(partial_params(list(wrapped.params), len(rest), keywords))
            except CannotBind:
                params = None
        return replace(wrapped, params=params, kind="partial", wraps=target.id, bound_in=where)

    def _method(self, cls: ast.ClassDef, name: str, kind: str) -> _Callable | None:
        """Method ``name`` of ``cls`` as an instance has it bound (without ``self``); None when
        the class body does not define it (a base class may: the source does not say)."""
        method = None
        for stmt in _flat(cls.body):
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == name:
                method = stmt
        if method is None:
            return None
        params = params_of(method.args)
        static = any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in method.decorator_list
        )
        if not static and params and params[0].kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD):
            params = params[1:]
        doc = ast.get_docstring(method)
        if kind == "instance":
            doc = doc or ast.get_docstring(cls)
        return _Callable(
            tuple(params),
            _source(method.returns),
            doc,
            isinstance(method, ast.AsyncFunctionDef),
            kind,
            wraps=cls.name if kind != "method" else f"{cls.name}.{name}",
        )

    def functions(self) -> list[Entry]:
        exported = set(self.exported)
        names = [n for n in self.callables if not n.startswith("_") or n in exported]
        # __all__ may list what the source cannot describe: Start allows it all the same
        for name in self.exported:
            if name in self.callables or name in names:
                continue
            if name in self.classes:
                cls = self.classes[name]
                init = self._method(cls, "__init__", "class")
                made = init or _Callable(None, None, None, False, "class")  # inherited: unknown
                self.callables[name] = replace(made, doc=ast.get_docstring(cls), wraps=None)
            elif name in self.imported:
                self.callables[name] = _Callable(None, None, None, False, "imported")
            else:
                continue
            names.append(name)
        return [self.callables[n].entry(n) for n in names[:MAX_FUNCTIONS]]


def describe_source(source: bytes, filename: str = "<script>") -> Entry:
    """``{"doc": ..., "functions": [...]}`` of one script's source, or ``{"error": ...}``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a script's SyntaxWarnings are its own business
            tree = ast.parse(source, filename)
        return {"doc": _cut_doc(ast.get_docstring(tree)), "functions": _Module(tree).functions()}
    except SyntaxError as exc:  # also IndentationError, undecodable bytes, null bytes
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return {"error": f"{type(exc).__name__}: {exc.msg}{where}"}
    except (ValueError, RecursionError, MemoryError) as exc:  # nested too deep to parse
        why = str(exc) or "the source is too complex to parse"
        return {"error": f"{type(exc).__name__}: {why}"}


def _read(path: str, info: os.stat_result) -> Entry:
    """Describe the file at ``path``: only a regular file is opened, and only so much read."""
    limit = MAX_FILE_BYTES
    if not stat.S_ISREG(info.st_mode):
        return {"error": "not a regular file: not read"}
    if info.st_size > limit:
        return {"error": f"the file is larger than {limit} bytes: not read"}
    try:
        # O_NONBLOCK: a FIFO put in its place meanwhile cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {"error": "not a regular file: not read"}
            chunks = []
            left = limit + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc.strerror or exc}"}
    source = b"".join(chunks)
    if len(source) > limit:
        return {"error": f"the file is larger than {limit} bytes: not read"}
    return describe_source(source, path)


def describe_file(path: str) -> Entry:
    """The catalogue entry of one file (read, never run)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        described: Entry = {"error": f"{type(exc).__name__}: {exc.strerror or exc}"}
    else:
        described = _read(path, info)
    return _entry(path, described)


def _entry(path: str, described: Entry) -> Entry:
    entry: Entry = {
        "script_uri": f"file://{path}",
        "doc": described.get("doc"),
        "functions": described.get("functions", []),
    }
    if "error" in described:
        entry["error"] = described["error"]
    return entry


def _text_size(described: Entry) -> int:
    size = len(described.get("doc") or "")
    for f in described.get("functions", []):
        size += len(f["name"]) + len(f["signature"]) + len(f["doc"] or "") + 50
    return size


# -- the tree ----------------------------------------------------------------------------------


class _Stop(Exception):
    """A bound of the listing was reached."""


class Catalogue:
    """The catalogue of the scripts under ``roots``; what it parsed is kept for the next
    listing (one listing at a time)."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self._cache: dict[str, tuple[tuple[int, ...], Entry]] = {}
        self._lock = threading.Lock()

    def list(self) -> list[Entry]:
        """Every script's entry, sorted by URI (see the module's docstring)."""
        with self._lock:
            entries: dict[str, Entry] = {}
            cache: dict[str, tuple[tuple[int, ...], Entry]] = {}
            budget = {"files": MAX_FILES, "entries": MAX_ENTRIES, "text": MAX_TEXT}
            for root in self.roots:
                try:
                    for path in self._files(root, budget):
                        if path not in entries:
                            entries[path] = self._describe(path, cache, budget)
                except _Stop as stop:
                    uri = f"file://{root}/"
                    entries[uri] = {
                        "script_uri": uri,
                        "doc": None,
                        "functions": [],
                        "error": str(stop),
                    }
                    break
            self._cache = cache  # only the files still there are kept
            return [entries[k] for k in sorted(entries, key=lambda k: entries[k]["script_uri"])]

    def _inside(self, real: str) -> bool:
        return any(is_within(real, r) for r in self.roots)

    def _files(self, root: str, budget: dict[str, int]) -> Iterator[str]:
        """The real path of every ``.py`` file under ``root``, in a stable order."""
        if not os.path.isdir(root):
            return
        visited = {root}
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    children = []
                    for child in it:
                        budget["entries"] -= 1
                        if budget["entries"] < 0:
                            raise _Stop(
                                f"listing stopped: more than {MAX_ENTRIES} directory entries "
                                "under the script roots"
                            )
                        children.append(child)
            except OSError:
                continue  # a folder that cannot be read (or vanished) lists nothing
            folders = []
            for child in sorted(children, key=lambda c: c.name):
                name = child.name
                if name.startswith(".") or name == "__pycache__":
                    continue
                try:
                    is_link = child.is_symlink()
                    is_dir = child.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                real = os.path.realpath(child.path) if is_link else child.path
                if is_link and not self._inside(real):
                    continue  # a link out of the roots: not followed
                if is_link and not os.path.exists(real):
                    real = child.path  # a link to nothing (or a loop): listed with its error
                if is_dir or (is_link and os.path.isdir(real)):
                    if real not in visited:  # each real folder once: a loop ends
                        visited.add(real)
                        folders.append(real)
                    continue
                if not name.endswith(".py"):
                    continue
                if budget["files"] <= 0:
                    raise _Stop(
                        f"listing stopped: more than {MAX_FILES} .py files under the script "
                        "roots; the first ones are listed"
                    )
                budget["files"] -= 1
                yield real
            stack.extend(reversed(folders))

    def _describe(
        self, path: str, cache: dict[str, tuple[tuple[int, ...], Entry]], budget: dict[str, int]
    ) -> Entry:
        try:
            info = os.stat(path)
        except OSError as exc:
            return _entry(path, {"error": f"{type(exc).__name__}: {exc.strerror or exc}"})
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        known = self._cache.get(path) or cache.get(path)
        if known is not None and known[0] == key:
            described = known[1]
        else:
            described = _read(path, info)
        cache[path] = (key, described)
        size = _text_size(described)
        if size > budget["text"]:
            return _entry(
                path,
                {
                    "error": f"not described: the catalogue passed its bound of "
                    f"{MAX_TEXT} characters"
                },
            )
        budget["text"] -= size
        return _entry(path, described)


def list_scripts(roots: Iterable[str]) -> list[Entry]:
    """The catalogue of every root, sorted by URI; each file once (see the module's doc)."""
    return Catalogue(roots).list()
