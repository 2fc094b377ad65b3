"""Every setting of the procedure service, declared once: its keyword, its Tango device
property, its default and what it means.

:class:`~.application.ScriptExecutionService` takes the keywords, the Tango device declares
the properties from this table (:func:`setting`), :class:`~.gitmanager.GitSettings` takes its
defaults from it, and the README's table of device properties is checked against it by the
tests. Imported by every worker, so it stays light: standard library only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: the service keyword ``name`` and the device property ``tango_name``."""

    name: str
    tango_name: str
    dtype: Any  # as the Tango property declares it: str, int, float or (str,)
    default: Any
    doc: str
    unit: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "script_roots",
        "ScriptRoots",
        (str,),
        [],
        "Directories that file:// scripts must lie in, once symlinks are resolved (none: no "
        "file script is accepted by the device; the Python service's None accepts any file)",
    ),
    Setting(
        "abort_script",
        "AbortScript",
        str,
        "",
        "URI of the abort script that Stop with run_abort runs (it gets the stopped "
        "procedure's subarray_id)",
    ),
    Setting(
        "stop_grace",
        "StopGracePeriod",
        float,
        3.0,
        "Seconds a script has to end after SIGTERM before its whole process tree is killed",
        "s",
    ),
    Setting("history_limit", "HistoryLength", int, 100, "How many ended procedures are kept"),
    Setting("max_running", "MaxRunning", int, 1, "How many procedures may run at once"),
    Setting(
        "spare_workers",
        "SpareWorkers",
        int,
        2,
        "Worker processes kept started and idle, so that a Prepare does not wait for one",
    ),
    Setting(
        "preload_modules",
        "PreloadModules",
        (str,),
        [],
        "Modules imported once before workers are forked (e.g. numpy), so that scripts "
        "importing them load fast; missing ones are skipped; the list in force is the one of "
        "the first device of the server",
    ),
    Setting(
        "allowed_git_repos",
        "AllowedGitRepositories",
        (str,),
        [],
        "Shell-style patterns a git script's repository URL must match (none: git scripts "
        "are refused)",
    ),
    Setting(
        "git_cache_dir",
        "GitCacheDirectory",
        str,
        "",
        "Where git clones and script environments are kept (empty: $OET_CACHE_DIR, else "
        "~/.cache/ska-oso-oet)",
    ),
    Setting(
        "git_timeout",
        "GitTimeout",
        float,
        60.0,
        "Seconds a git command may take (an unreachable repository fails within about this)",
        "s",
    ),
    Setting(
        "install_timeout",
        "EnvironmentTimeout",
        float,
        600.0,
        "Seconds the installation of a git script's environment may take",
        "s",
    ),
    Setting(
        "max_environments",
        "MaxEnvironments",
        int,
        10,
        "Script environments kept on disk; the least recently used beyond this are deleted "
        "when not in use",
    ),
    Setting(
        "max_request_size",
        "MaxRequestSize",
        int,
        1024 * 1024,
        "Largest request a command (or a REST body) may be; a larger one is refused",
        "bytes",
    ),
    Setting(
        "max_argument_size",
        "MaxArgumentSize",
        int,
        64 * 1024,
        "Largest JSON of the arguments of one call (init or a started function), which every "
        "summary of the procedure carries; larger arguments are refused",
        "bytes",
    ),
    Setting(
        "max_summarise_ids",
        "MaxSummariseIds",
        int,
        1000,
        "Most distinct procedure IDs one Summarise may ask for (duplicates are answered once)",
    ),
    Setting(
        "max_procedures",
        "MaxProcedures",
        int,
        32,
        "Most procedures not yet ended at once (each has a process of its own); a Prepare "
        "beyond is refused (the abort script always runs)",
    ),
    Setting(
        "data_dir",
        "DataDirectory",
        str,
        "",
        "Where the device keeps what lasts, each device in its own folder: its history "
        "(history.sqlite) and the output of its procedures (empty: $OET_DATA_DIR, else "
        "~/.local/share/ska-oso-oet)",
    ),
    Setting(
        "output_limit",
        "OutputLimit",
        int,
        4_000_000,
        "Bytes of output kept per procedure (on disk, under DataDirectory); the oldest lines "
        "beyond are dropped and counted",
        "bytes",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}

#: Settings of the Python service only (no device property).
INSTALLERS = ("auto", "uv", "pip")  # "auto": uv when it is installed, else pip
INSTALLER = "auto"
MAX_CLONES = 50  # clones kept per repository
CACHE_ENV = "OET_CACHE_DIR"
CACHE_DEFAULT = "~/.cache/ska-oso-oet"


def cache_dir(configured: str | None) -> str:
    """Where clones and environments live: ``configured``, else $OET_CACHE_DIR, else
    ~/.cache/ska-oso-oet; absolute."""
    chosen = configured or os.environ.get(CACHE_ENV) or CACHE_DEFAULT
    return os.path.abspath(os.path.expanduser(chosen))


DATA_ENV = "OET_DATA_DIR"


def data_dir(configured: str | None) -> str:
    """Where the device keeps what lasts: ``configured``, else $OET_DATA_DIR, else
    ``$XDG_DATA_HOME/ska-oso-oet`` (~/.local/share/ska-oso-oet); absolute."""
    chosen = configured or os.environ.get(DATA_ENV)
    if not chosen:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
        chosen = os.path.join(base, "ska-oso-oet")
    return os.path.abspath(os.path.expanduser(chosen))


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def default(name: str) -> Any:
    """The default of setting ``name`` (a fresh copy of a list)."""
    value = _BY_NAME[name].default
    return list(value) if isinstance(value, list) else value


def markdown_table() -> str:
    """The device properties as the README shows them."""
    rows = ["| property | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        if isinstance(s.default, list):
            shown = "`[]`"
        elif s.default == "":
            shown = '`""`'
        else:
            value = f"{s.default:g}" if isinstance(s.default, float) else str(s.default)
            shown = f"`{value}` {s.unit}".strip()
        rows.append(f"| `{s.tango_name}` | {shown} | {s.doc} |")
    return "\n".join(rows)
