"""Scripts (what to run), their arguments, and loading them as Python modules.

Imported by every worker process, so it stays light: standard library only.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import re
import stat
import sys
import types
from typing import Any

from ska_oso_oet.procedure.gitmanager import GitArgs


class ProcedureInput:
    """ProcedureInput is a non-functional dataclass holding the arguments passed to a script
    method."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcedureInput):
            return NotImplemented
        return self.args == other.args and self.kwargs == other.kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"<ProcedureInput({', '.join(parts)})>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_input, (self.args, self.kwargs))


def _make_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ProcedureInput:
    return ProcedureInput(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class ExecutableScript:
    """Base class for all executable scripts.

    Expected specialisations: scripts on the file system, scripts in a git repository, and
    in time scripts given as a string or stored in the ODA.
    """

    script_uri: str

    #: URI prefix that every script of this kind must have
    prefix = ""

    def __post_init__(self) -> None:
        if not isinstance(self.script_uri, str) or not self.script_uri.startswith(self.prefix):
            raise ValueError(
                f"Script URI {self.script_uri!r} is not a {type(self).__name__}: "
                f"it must start with {self.prefix!r}"
            )
        if len(self.script_uri) == len(self.prefix):
            raise ValueError(f"Script URI {self.script_uri!r} names no file")
        if "\x00" in self.script_uri:
            raise ValueError("Script URI contains a NUL character")
        try:
            self.script_uri.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("Script URI is not text (it holds a lone surrogate)") from None

    @property
    def path(self) -> str:
        """The part of the URI after the scheme."""
        return self.script_uri[len(self.prefix) :]


@dataclasses.dataclass(frozen=True)
class FileSystemScript(ExecutableScript):
    """Represents a script stored on the file system: ``file:///absolute/path.py``."""

    prefix = "file://"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not os.path.isabs(self.path):
            raise ValueError(
                f"Script URI {self.script_uri!r} must give an absolute path, "
                "e.g. file:///home/me/scripts/hello.py"
            )


@dataclasses.dataclass(frozen=True)
class GitScript(ExecutableScript):
    """Represents a script in a git repository: ``git://path/in/repo.py``."""

    git_args: GitArgs = dataclasses.field(default_factory=GitArgs)
    create_env: bool = False

    prefix = "git://"

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = self.path.split("/")
        if os.path.isabs(self.path) or ".." in parts or "" in parts or "\\" in self.path:
            raise ValueError(
                f"Script URI {self.script_uri!r} must give a relative path inside the "
                "repository, without '..' or empty parts"
            )


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies below it; give both with symlinks resolved
    (``os.path.realpath``). The one containment check of the OET."""
    return os.path.commonpath([path, root]) == root


_NOT_IDENTIFIER = re.compile(r"\W")


class ModuleFactory:
    """Factory class used to return Python Module instances from a variety of storage
    back-ends."""

    @staticmethod
    def get_module(script: ExecutableScript, *, path: str | None = None) -> types.ModuleType:
        """Load Python code from storage, returning an executable Python module.

        :param script: Script object describing the script to load
        :param path: the file to load, symlinks resolved, as the server checked it (a file
            script's real path, a git script's file in its checkout); None: the URI's own
            path, resolved now
        :return: Python module
        """
        if path is None:
            if not isinstance(script, FileSystemScript):
                raise ValueError(f"No local file given for {script.script_uri}")
            path = os.path.realpath(script.path)
        return load_module_from_file(path)


class ScriptChangedError(PermissionError):
    """The script file is no longer the one that was checked (a symlink or another kind of
    file took its place, or the place of a directory on its path)."""


#: Flags of every open on the way to a script: never follow a symlink, never block (a FIFO
#: put in a script's place must not hang the worker), never leak to a child.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _OPEN_FLAGS | getattr(os, "O_DIRECTORY", 0)


def read_checked_file(path: str) -> bytes:
    """The bytes of the regular file at ``path``, an absolute path with symlinks resolved (as
    the server checked it against ScriptRoots).

    The file is opened once, one path component at a time, each relative to the directory
    opened before it and none through a symlink, so the file read is the one at ``path`` at
    the moment it is opened: a file or directory swapped for a symlink after the check is
    refused (:class:`ScriptChangedError`), never followed.
    """
    if not os.path.isabs(path):
        raise ValueError(f"Not an absolute path: {path}")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"Not a resolved path: {path}")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(part, _OPEN_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise FileNotFoundError(f"Script file not found: {path}") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    where = "/" + "/".join(parts[: i + 1])
                    raise ScriptChangedError(
                        f"Script {path} changed after it was checked: {where} is no longer "
                        "a plain file or directory (a symlink?); the script was not run"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ScriptChangedError(
                f"Script {path} changed after it was checked: it is not a regular file now; "
                "the script was not run"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _SourceLoader(importlib.abc.Loader):
    """Executes a script from the bytes read once from its file (:func:`read_checked_file`),
    so that what runs is exactly what was read; tracebacks and ``inspect`` show those bytes
    too, whatever the file holds later."""

    def __init__(self, path: str, source: bytes) -> None:
        self.path = path
        self.source = source

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        code = compile(self.source, self.path, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # running the script is the point

    def get_source(self, fullname: str) -> str:
        return importlib.util.decode_source(self.source)


def load_module_from_file(path: str) -> types.ModuleType:
    """Import the Python file at ``path`` (absolute, symlinks resolved) as a fresh module,
    from the bytes of one checked open (:func:`read_checked_file`).

    The file's directory goes first on ``sys.path`` so that a script can import modules that
    sit beside it, as it could when run with ``python script.py``.
    """
    source = read_checked_file(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "oet_script_" + _NOT_IDENTIFIER.sub("_", stem)
    loader = _SourceLoader(path, source)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ImportError(f"Cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # tracebacks and inspect read these lines, not the file as it may be by then
    lines = loader.get_source(name).splitlines(keepends=True)
    linecache.cache[path] = (len(source), None, lines, path)
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
