"""Virtual environments for git scripts: one per repository and commit, made once.

An environment is a virtual environment under ``<cache_dir>/envs/<env_id>`` into which the
repository's dependencies (``requirements.txt``, else ``[project] dependencies`` of
``pyproject.toml``) are installed. The worker that runs the script keeps the server's own
interpreter and packages and puts the environment's site-packages first on ``sys.path``, so
pytango and the OET are never reinstalled: the installer is told which versions the server
already has and installs only what is missing.

Creation is coordinated across worker processes with a file lock: many procedures asking for
one environment wait for a single creation. When it fails, every procedure that was waiting
for it fails with the installer's error, and the broken environment is not reused: the next
request starts afresh.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from typing import Any

from ska_oso_oet.procedure.gitmanager import (
    GitArgs,
    GitSettings,
    file_lock,
    hold,
    log_event,
    prune,
    repository_key,
)

READY_MARK = ".oet-ready"
FAILED_MARK = ".oet-failed"


class EnvironmentBuildError(RuntimeError):
    """Creating an environment failed; the message carries the installer's error."""


class FileEvent:
    """An event that several processes can see: a marker file in the environment."""

    def __init__(self, path: str) -> None:
        self.path = path

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def set(self, text: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def clear(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def text(self) -> str:
        with open(self.path) as f:
            return f.read()


@dataclasses.dataclass
class Environment:
    """Represents a Python virtual environment for script execution.

    ``creating`` is set while a process builds it (and holds its creation lock); ``created``
    once it is complete. Both are visible to every worker process.
    """

    env_id: str
    creating: FileEvent
    created: FileEvent
    location: str
    site_packages: str

    def activate(self) -> None:
        """Put the environment's packages first on this process's ``sys.path``."""
        if self.site_packages in sys.path:
            sys.path.remove(self.site_packages)
        sys.path.insert(0, self.site_packages)
        hold(self.location)


class EnvironmentManager:
    """Manages Python virtual environments for script execution."""

    def __init__(self, mp_context: Any = None, base_dir: str = "/tmp/environments/") -> None:
        # mp_context is part of the documented signature only: environments are coordinated
        # through files (FileEvent, flock) that every process sees, not multiprocessing
        self.base_dir = base_dir

    def create_env(self, git_args: GitArgs) -> Environment:
        """The environment for a repository and (full) commit; made on disk by
        :meth:`ensure_installed`."""
        if not git_args.git_commit:
            raise ValueError("An environment is keyed by commit: resolve the commit first")
        env_id = f"{repository_key(git_args.git_repo)}-{git_args.git_commit[:12]}"
        location = os.path.join(self.base_dir, env_id)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return Environment(
            env_id=env_id,
            creating=FileEvent(location + ".creating"),
            created=FileEvent(os.path.join(location, READY_MARK)),
            location=location,
            site_packages=os.path.join(location, "lib", version, "site-packages"),
        )

    def delete_env(self, env_id: str) -> None:
        """Delete an environment (refused while a process uses it)."""
        location = os.path.join(self.base_dir, env_id)
        if os.path.dirname(os.path.abspath(location)) != os.path.abspath(self.base_dir):
            raise ValueError(f"{env_id!r} is not an environment name")
        with file_lock(location + ".lock"):
            fd = os.open(location + ".inuse", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(f"Environment {env_id} is in use") from None
                shutil.rmtree(location, ignore_errors=True)
            finally:
                os.close(fd)

    def ensure_installed(
        self, env: Environment, checkout: str, settings: GitSettings
    ) -> Environment:
        """Make ``env`` from the repository at ``checkout`` unless it exists; wait while
        another process makes it. Raises EnvironmentBuildError with the installer's error."""
        os.makedirs(self.base_dir, exist_ok=True)
        asked = time.time()
        with file_lock(env.location + ".lock"):
            if env.created.is_set():
                os.utime(env.location)
                return env
            failed = FileEvent(os.path.join(env.location, FAILED_MARK))
            if failed.is_set() and os.stat(failed.path).st_mtime >= asked - 0.001:
                # the creation this procedure waited for failed: report it, do not retry
                raise EnvironmentBuildError(failed.text())
            shutil.rmtree(env.location, ignore_errors=True)  # never reuse a broken one
            env.creating.set(str(os.getpid()))
            try:
                _build(env, checkout, settings)
            except EnvironmentBuildError as exc:
                os.makedirs(env.location, exist_ok=True)
                failed.set(str(exc))
                log_event(settings, f"environment {env.env_id} FAILED")
                raise
            finally:
                env.creating.clear()
            env.created.set(time.strftime("%Y-%m-%dT%H:%M:%S"))
            log_event(settings, f"environment {env.env_id} created")
        prune(self.base_dir, settings.max_environments)
        return env


def find_uv() -> str | None:
    """The uv executable beside this interpreter, else on PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which("uv", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def _run(cmd: list[str], what: str, timeout: float, cwd: str) -> str:
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(f"{what} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise EnvironmentBuildError(f"{what} could not run: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise EnvironmentBuildError(f"{what} failed:\n{tail}")
    return done.stdout


def requirements_file(checkout: str, scratch: str) -> str | None:
    """The file that lists the repository's dependencies: its own requirements.txt (so that
    its ``-r``/``-c`` includes and relative paths resolve), else a file written to
    ``scratch`` from pyproject's ``[project] dependencies``; None when it declares none."""
    req_txt = os.path.join(checkout, "requirements.txt")
    if os.path.isfile(req_txt):
        return req_txt
    pyproject = os.path.join(checkout, "pyproject.toml")
    if os.path.isfile(pyproject):
        with open(pyproject, "rb") as f:
            data = tomllib.load(f)
        dependencies = list(data.get("project", {}).get("dependencies", []))
        if dependencies:
            path = os.path.join(scratch, "oet-requirements.txt")
            with open(path, "w") as f:
                f.write("\n".join(dependencies) + "\n")
            return path
    return None


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def server_packages() -> dict[str, str]:
    """Distributions the server's interpreter already has: normalised name -> version."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_normalise(name), dist.version)
    return found


def _build(env: Environment, checkout: str, settings: GitSettings) -> None:
    installer = settings.installer
    uv = find_uv() if installer in ("auto", "uv") else None
    if installer == "uv" and uv is None:
        raise EnvironmentBuildError("The uv installer was asked for but is not installed")
    timeout = settings.install_timeout
    if uv is not None:
        _run([uv, "venv", "--quiet", "--python", sys.executable, env.location], "uv venv",
             timeout, checkout)  # fmt: skip
    else:
        _run([sys.executable, "-m", "venv", "--without-pip", env.location], "venv", timeout,
             checkout)  # fmt: skip
    # Let the environment's own interpreter see the server's packages (pip honours this).
    server_paths = [p for p in sys.path if p and os.path.isdir(p)]
    os.makedirs(env.site_packages, exist_ok=True)
    with open(os.path.join(env.site_packages, "_oet_server.pth"), "w") as f:
        f.write("\n".join(server_paths) + "\n")
    req_file = requirements_file(checkout, env.location)
    if req_file is None:
        return
    env_python = os.path.join(env.location, "bin", "python")
    if uv is None:
        _run([sys.executable, "-m", "pip", "--python", env_python, "install", "--quiet",
              "--disable-pip-version-check", "-r", req_file], "pip install", timeout,
             checkout)  # fmt: skip
        return
    have = server_packages()
    constraints = os.path.join(env.location, "oet-server-constraints.txt")
    with open(constraints, "w") as f:
        f.write("".join(f"{n}=={v}\n" for n, v in sorted(have.items())))
    try:
        pinned = _run(
            [uv, "pip", "compile", "--quiet", "--no-header", "--python", sys.executable,
             "--constraint", constraints, req_file],
            "Resolving the dependencies (uv pip compile)", timeout, checkout,
        )  # fmt: skip
    except EnvironmentBuildError as exc:
        raise EnvironmentBuildError(
            f"{exc}\n(Every package the OET server already has is held at the server's "
            "version, e.g. pytango and numpy: a script's environment adds packages, it does "
            "not replace the server's.)"
        ) from None
    missing = []
    for line in pinned.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if match and _normalise(match.group(1)) in have and "==" in line:
            continue  # the server already has it, at the version the resolver chose
        missing.append(line)
    if missing:
        todo = os.path.join(env.location, "oet-install.txt")
        with open(todo, "w") as f:
            f.write("\n".join(missing) + "\n")
        _run([uv, "pip", "install", "--quiet", "--no-deps", "--python", env_python, "-r", todo],
             "uv pip install", timeout, checkout)  # fmt: skip
