"""Static helper functions for cloning and working with a Git repository.

Clones are cached under ``<cache_dir>/clones/<repository key>/<commit>``: one checkout per
repository and commit, made once however many procedures ask for it at the same time (a file
lock serialises them, across processes) and reused afterwards.

Security: a repository URL must match one of the operator's allowed patterns, and branch,
commit and URL values are checked before any git command runs. Git runs through GitPython
(imported only when a git script needs it), without a shell, with user values after ``--``,
with GitPython's unsafe protocol and option checks on, with only the usual transports allowed,
never prompting, and killed with its helpers when it overruns its timeout.
"""

from __future__ import annotations

import dataclasses
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ska_oso_oet.procedure import settings

DEFAULT_GIT_REPOSITORY = "https://gitlab.com/ska-telescope/oso/ska-oso-scripting.git"


@dataclasses.dataclass(frozen=True)
class GitArgs:
    """GitArgs captures information required to identify scripts located in git
    repositories."""

    git_repo: str = DEFAULT_GIT_REPOSITORY
    git_branch: str | None = None
    git_commit: str | None = None


@dataclasses.dataclass(frozen=True)
class GitSettings:
    """Where clones and environments live, and how long git and installers may take."""

    cache_dir: str
    git_timeout: float = settings.default("git_timeout")
    install_timeout: float = settings.default("install_timeout")
    installer: str = settings.INSTALLER  # one of settings.INSTALLERS
    max_clones: int = settings.MAX_CLONES
    max_environments: int = settings.default("max_environments")


class GitError(RuntimeError):
    """A git operation failed; the message names the repository and the cause."""


_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")
_BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
_URL_BAD = re.compile(r"[\s\x00-\x1f\x7f]")
_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_ENCODED = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~-]+")
GIT_PROTOCOLS = "file:git:http:https:ssh"


def check_repository_url(url: str) -> None:
    """Refuse a repository URL that is malformed or could be read as an option."""
    if not isinstance(url, str) or not url:
        raise ValueError("git_repo must be a non-empty URL")
    if url.startswith("-") or _URL_BAD.search(url) or "::" in url:
        raise ValueError(f"git_repo {url!r} is not an acceptable repository URL")
    if not (url.startswith(_SCHEMES) or _SCP_LIKE.fullmatch(url)):
        raise ValueError(
            f"git_repo {url!r} must be an https://, http://, ssh://, git:// or file:// URL "
            "(or user@host:path)"
        )
    # git and curl resolve dot segments, so "allowed/../elsewhere" would match an allowed
    # pattern yet fetch from elsewhere: refuse them, and their encoded forms
    if "://" in url:
        authority_and_path = url.split("://", 1)[1]
        path = authority_and_path.split("/", 1)[1] if "/" in authority_and_path else ""
    else:  # user@host:path
        path = url.split(":", 1)[1]
    if (
        any(segment in (".", "..") for segment in path.split("/"))
        or _ENCODED.search(url)
        or any(c in url for c in "\\?#")
    ):
        raise ValueError(
            f"git_repo {url!r} must not contain '.' or '..' path segments, encoded dots or "
            "slashes, '?', '#' or '\\'"
        )


def check_branch(branch: str) -> None:
    """Refuse branch names that git would not accept, or that look like options."""
    if (
        not branch
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or not _BRANCH_CHARS.fullmatch(branch)
        or ".." in branch
        or "//" in branch
        or "@{" in branch
    ):
        raise ValueError(f"git_branch {branch!r} is not a valid branch name")


def check_commit(commit: str) -> None:
    if not _COMMIT.fullmatch(commit):
        raise ValueError(
            f"git_commit {commit!r} must be a commit hash: 7 to 40 hexadecimal digits"
        )


def check_git_args(args: GitArgs, allowed: Iterable[str]) -> None:
    """Check every field of ``args``, and that the repository is one the operator allows."""
    check_repository_url(args.git_repo)
    if args.git_branch is not None:
        check_branch(args.git_branch)
    if args.git_commit is not None:
        check_commit(args.git_commit)
    patterns = list(allowed)
    if not any(fnmatch.fnmatchcase(args.git_repo, p) for p in patterns):
        listed = ", ".join(patterns) if patterns else "none are configured"
        raise PermissionError(
            f"Repository {args.git_repo} is not an allowed script source (allowed "
            f"repositories, the device property AllowedGitRepositories: {listed})"
        )


def repository_key(url: str) -> str:
    """A directory name for a repository: readable tail plus a hash of the whole URL."""
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


# Every git command runs with these on top of this process's environment: only the usual
# transports, never a prompt, stalled transfers and unanswered ssh connections abandoned.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "30",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
    "LC_ALL": "C",
}


def run_git(args: list[str], repo: str, timeout: float, cwd: str | None = None) -> str:
    """Run ``git args[0] args[1:]`` through GitPython and return its output.

    No shell; stdin is /dev/null; GitPython's own checks for unsafe protocols and options are
    applied to every argument; after ``timeout`` seconds GitPython kills git and the helpers
    it started (``kill_after_timeout``).
    """
    op, rest = args[0], args[1:]
    # imported here, not with the module (which every worker imports): importing GitPython
    # runs `git version`, takes tens of milliseconds, and fails where git is not installed
    try:
        import git
    except ImportError as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GitError(
            f"git {op} of repository {repo} could not run: git is not installed here or "
            f"not on PATH (GitPython: {cause})"
        ) from None
    # GitPython finds the helpers of a git it must kill (git-remote-https, ssh) with pgrep or
    # ps; without both it would kill git alone, and a helper still waiting on the network
    # would keep git's output open, and this call waiting, long after the timeout.
    if shutil.which("pgrep") is None and shutil.which("ps") is None:
        raise GitError(
            f"git {op} of repository {repo} was not run: a git that overruns its timeout "
            "could not be killed with its helpers, as neither pgrep nor ps is installed "
            "(install procps)"
        )
    unsafe_options = {
        "clone": git.Repo.unsafe_git_clone_options,
        "ls-remote": git.Git.unsafe_git_ls_remote_options,
    }.get(op, [])
    try:
        for arg in rest:
            git.Git.check_unsafe_protocols(arg)
        git.Git.check_unsafe_options(
            options=[a for a in rest if a.startswith("-")], unsafe_options=unsafe_options
        )
    except (git.exc.UnsafeProtocolError, git.exc.UnsafeOptionError) as exc:
        raise GitError(f"git {op} of repository {repo} was refused: {exc}") from None
    # GitPython's git <op> (runner.ls_remote, runner.clone, ...): runs ["git", op, *rest]
    command = getattr(git.Git(cwd), op.replace("-", "_"))
    started = time.monotonic()
    try:
        status, out, err = command(
            *rest,
            env=_GIT_ENV,
            shell=False,
            kill_after_timeout=timeout,
            with_extended_output=True,
            with_exceptions=False,
        )
    except git.exc.GitCommandNotFound as exc:
        raise GitError(
            f"git {op} of repository {repo} could not run: git is not installed here ({exc})"
        ) from None
    if status != 0 and time.monotonic() - started >= timeout:
        raise GitError(
            f"git {op} of repository {repo} timed out after {timeout:g} s "
            "(is the repository reachable from here?)"
        )
    if status != 0:
        lines = [line.strip() for line in err.strip().splitlines() if line.strip()]
        cause = " ".join(lines[-6:]) if lines else f"exit code {status}"
        raise GitError(f"git {op} of repository {repo} failed: {cause}")
    return str(out)


def resolve_commit(args: GitArgs, timeout: float) -> str | None:
    """The commit that ``args`` names: the commit if given, else the branch's (or the default
    branch's) head, asked of the remote. None when a short commit hash must be resolved in
    the clone."""
    if args.git_commit is not None:
        return args.git_commit.lower() if len(args.git_commit) == 40 else None
    ref = f"refs/heads/{args.git_branch}" if args.git_branch else "HEAD"
    out = run_git(["ls-remote", "--", args.git_repo, ref], args.git_repo, timeout)
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    what = f"branch {args.git_branch!r}" if args.git_branch else "a default branch"
    raise GitError(f"Repository {args.git_repo} has no {what}")


@contextmanager
def file_lock(path: str, shared: bool = False) -> Iterator[int]:
    """Hold an flock on ``path`` (created if need be); released if the holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def log_event(settings: GitSettings, text: str) -> None:
    """Append a line to the cache's activity log (what was cloned and built, when)."""
    os.makedirs(settings.cache_dir, exist_ok=True)
    with open(os.path.join(settings.cache_dir, "activity.log"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {text}\n")


def checkout(args: GitArgs, settings: GitSettings) -> tuple[str, str]:
    """A checkout of the commit ``args`` names, cloned once and cached: (directory, commit).

    A cached commit is used without waiting for anything (checkouts appear by an atomic
    rename); clones of one commit are serialised by a lock of that commit only, so a slow
    clone of one commit never holds up another.
    """
    check_repository_url(args.git_repo)
    commit = resolve_commit(args, settings.git_timeout)
    want = (commit or str(args.git_commit)).lower()
    repo_dir = os.path.join(settings.cache_dir, "clones", repository_key(args.git_repo))
    os.makedirs(repo_dir, exist_ok=True)
    found = _use_cached(repo_dir, want)
    if found is not None:
        return found, os.path.basename(found)
    with file_lock(os.path.join(repo_dir, f".lock-{want}")):
        found = _use_cached(repo_dir, want)
        if found is not None:
            return found, os.path.basename(found)
        tmp = tempfile.mkdtemp(prefix=".clone-", dir=repo_dir)
        try:
            # not GitPython's Repo.clone_from, which waits for git without the timeout
            run_git(
                ["clone", "--quiet", "--no-checkout", "--", args.git_repo, tmp],
                args.git_repo,
                settings.git_timeout,
            )
            run_git(
                ["checkout", "--quiet", "--detach", want, "--"],
                args.git_repo,
                settings.git_timeout,
                cwd=tmp,
            )
            full = run_git(
                ["rev-parse", "HEAD"], args.git_repo, settings.git_timeout, cwd=tmp
            ).strip()
            final = os.path.join(repo_dir, full)
            hold(final)  # before it appears, so that no pruning can take it
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log_event(settings, f"clone {args.git_repo} {full}")
    with file_lock(os.path.join(repo_dir, ".lock")):
        prune(repo_dir, settings.max_clones)
    return final, full


def _use_cached(repo_dir: str, commit: str) -> str | None:
    """The cached checkout of ``commit``, marked in use; None if there is none."""
    found = _cached(repo_dir, commit)
    if found is None:
        return None
    hold(found)
    if not os.path.isdir(found):  # pruned just before the hold
        os.close(_held.pop())
        return None
    os.utime(found)
    return found


def _cached(repo_dir: str, commit: str) -> str | None:
    for name in os.listdir(repo_dir):
        path = os.path.join(repo_dir, name)
        if _COMMIT.fullmatch(name) and name.startswith(commit.lower()) and os.path.isdir(path):
            return path
    return None


def prune(parent: str, keep: int) -> None:
    """Delete the least recently used entries of ``parent`` beyond ``keep``, skipping any that
    a process holds (an flock on ``<entry>.inuse``)."""
    entries = [
        os.path.join(parent, n)
        for n in os.listdir(parent)
        if not n.startswith(".") and os.path.isdir(os.path.join(parent, n))
    ]
    entries.sort(key=lambda p: os.stat(p).st_mtime, reverse=True)
    for path in entries[keep:]:
        fd = os.open(path + ".inuse", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # in use
        try:
            shutil.rmtree(path, ignore_errors=True)
            os.unlink(path + ".inuse")
        finally:
            os.close(fd)


_held: list[int] = []


def hold(path: str) -> None:
    """Mark ``path`` in use for as long as this process lives (a shared flock), so that
    pruning by another process leaves it alone."""
    fd = os.open(path + ".inuse", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)
