"""Scripts (what to run), their arguments, and loading them as Python modules.

Imported by every worker process, so it stays light: standard library only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
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
        :param path: where the script's file is, when it is not the URI's own path (a git
            script's checkout)
        :return: Python module
        """
        if path is None:
            if not isinstance(script, FileSystemScript):
                raise ValueError(f"No local file given for {script.script_uri}")
            path = script.path
        return load_module_from_file(path)


def load_module_from_file(path: str) -> types.ModuleType:
    """Import the Python file at ``path`` as a fresh module.

    The file's directory goes first on ``sys.path`` so that a script can import modules that
    sit beside it, as it could when run with ``python script.py``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Script file not found: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "oet_script_" + _NOT_IDENTIFIER.sub("_", stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
