"""Scripts from real local git repositories, with and without their own environment."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ScriptRejectedError,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.domain import GitScript, ProcedureInput, ProcedureState
from ska_oso_oet.procedure.gitmanager import GitArgs
from ska_oso_oet.testing import make_wheel
from tests.helpers import TIMEOUT, Repo, free_port, states

S = ProcedureState
FINAL = [S.COMPLETE, S.STOPPED, S.FAILED]


@pytest.fixture
def git_ses(make_service, tmp_path):
    def make(**kwargs):
        kwargs.setdefault("allowed_git_repos", [f"file://{tmp_path}/*", "http://127.0.0.1:*"])
        kwargs.setdefault("git_cache_dir", str(tmp_path / "cache"))
        return make_service(**kwargs)

    return make


def activity(tmp_path: Path) -> list[str]:
    log = tmp_path / "cache" / "activity.log"
    return [line.split(" ", 2)[2] for line in log.read_text().splitlines()] if log.exists() else []


def run_script(ses, script: GitScript) -> tuple[list[str], str | None]:
    summary = ses.prepare(PrepareProcessCommand(script, ProcedureInput()))
    ready = ses.wait_for_state(summary.id, [S.READY, *FINAL], 60)
    assert ready.state is S.READY, ready.history.stacktrace
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    return states(final), final.history.stacktrace


def test_a_git_script_without_environment_completes(git_ses, repo, recorder):
    told = recorder("test.git")
    got, stacktrace = run_script(git_ses(), repo.script("scripts/plain.py"))
    assert stacktrace is None
    assert got == ["CREATING", "IDLE", "LOADING", "IDLE", "READY", "RUNNING", "READY", "COMPLETE"]
    assert told.wait(1)[0]["value"] == "second"  # no branch, no commit: the default branch


def test_branch_and_commit_pick_the_version(git_ses, repo, recorder):
    told = recorder("test.git")
    ses = git_ses()
    feature = ses.prepare(
        PrepareProcessCommand(repo.script("scripts/plain.py", git_branch="feature"))
    )
    loaded = ses.wait_for_state(feature.id, S.READY, TIMEOUT).script.git_args
    assert (loaded.git_branch, loaded.git_commit) == ("feature", repo.feature)  # recorded
    ses.stop(StopProcessCommand(feature.id, run_abort=False))
    run_script(ses, repo.script("scripts/plain.py", git_branch="feature"))
    run_script(ses, repo.script("scripts/plain.py", git_commit=repo.first))
    run_script(ses, repo.script("scripts/plain.py", git_commit=repo.second[:10]))
    assert [m["value"] for m in told.wait(3)] == ["feature", "first", "second"]


def test_a_git_script_with_its_environment_passes_prep_env(git_ses, repo, recorder):
    assert importlib.util.find_spec("localdep") is None  # not in the server's environment
    told = recorder("test.git")
    got, stacktrace = run_script(git_ses(), repo.script("scripts/uses_dep.py", create_env=True))
    assert stacktrace is None
    assert got == [
        "CREATING", "IDLE", "PREP_ENV", "IDLE", "LOADING", "IDLE", "INITIALISING", "READY",
        "RUNNING", "READY", "COMPLETE",
    ]  # fmt: skip
    assert told.wait(1)[0]["value"] == "from localdep 1.0"


def test_concurrent_prepares_of_one_commit_clone_and_build_once(git_ses, repo, tmp_path):
    ses = git_ses()
    ids = [
        ses.prepare(PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True))).id
        for _ in range(3)
    ]
    for pid in ids:
        ready = ses.wait_for_state(pid, [S.READY, *FINAL], 60)
        assert ready.state is S.READY, ready.history.stacktrace
    log = activity(tmp_path)
    assert [line.split()[0] for line in log] == ["clone", "environment"], log
    assert log[1].endswith("created")
    # a later prepare reuses both
    later = ses.prepare(PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True)))
    assert ses.wait_for_state(later.id, [S.READY, *FINAL], 60).state is S.READY
    assert len(activity(tmp_path)) == 2


def test_the_pip_installer_builds_the_environment_too(git_ses, repo, recorder):
    told = recorder("test.git")
    _, stacktrace = run_script(
        git_ses(installer="pip"), repo.script("scripts/uses_dep.py", create_env=True)
    )
    assert stacktrace is None
    assert told.wait(1)[0]["value"] == "from localdep 1.0"


def test_a_broken_dependency_fails_every_waiting_procedure_promptly(git_ses, tmp_path):
    missing = tmp_path / "wheels" / "nothere-1.0-py3-none-any.whl"
    repo = Repo(tmp_path, f"nothere @ {missing.as_uri()}")
    ses = git_ses()
    started = time.monotonic()
    ids = [
        ses.prepare(PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True))).id
        for _ in range(3)
    ]
    for pid in ids:
        final = ses.wait_for_state(pid, FINAL, 60)
        assert final.state is S.FAILED
        assert states(final)[-2:] == ["PREP_ENV", "FAILED"]
        assert "nothere" in final.history.stacktrace  # the installer's own error
    assert time.monotonic() - started < 30
    assert [line for line in activity(tmp_path) if "FAILED" in line] != []
    # the broken environment is not reused: the next prepare tries again
    failures = len([line for line in activity(tmp_path) if "FAILED" in line])
    again = ses.prepare(PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True)))
    assert ses.wait_for_state(again.id, FINAL, 60).state is S.FAILED
    assert len([line for line in activity(tmp_path) if "FAILED" in line]) == failures + 1


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_an_unreachable_repository_fails_naming_it_and_the_cause(git_ses):
    ses = git_ses(git_timeout=5)
    url = f"http://127.0.0.1:{free_port()}/scripts.git"  # nothing listens there
    summary = ses.prepare(
        PrepareProcessCommand(GitScript("git://x.py", git_args=GitArgs(git_repo=url)))
    )
    final = ses.wait_for_state(summary.id, FINAL, 30)
    assert final.state is S.FAILED
    assert url in final.history.stacktrace
    assert "onnect" in final.history.stacktrace  # "Failed to connect" / "Connection refused"


def test_a_repository_that_never_answers_fails_within_the_git_timeout(
    git_ses, silent_server, make_service
):
    ses = git_ses(git_timeout=2)
    url = f"http://127.0.0.1:{silent_server}/scripts.git"
    started = time.monotonic()
    summary = ses.prepare(
        PrepareProcessCommand(GitScript("git://x.py", git_args=GitArgs(git_repo=url)))
    )
    # meanwhile the service goes on serving other procedures
    other = ses.prepare(
        PrepareProcessCommand(
            GitScript("git://x.py", git_args=GitArgs(git_repo=url)), ProcedureInput()
        )
    )
    final = ses.wait_for_state(summary.id, FINAL, 30)
    assert final.state is S.FAILED
    assert "timed out after 2 s" in final.history.stacktrace
    assert url in final.history.stacktrace
    assert time.monotonic() - started < 15
    ses.wait_for_state(other.id, FINAL, 30)


def test_file_scripts_run_while_a_clone_hangs(git_ses, silent_server):
    from tests.helpers import script

    ses = git_ses(git_timeout=30, max_running=1)
    url = f"http://127.0.0.1:{silent_server}/scripts.git"
    hanging = ses.prepare(
        PrepareProcessCommand(GitScript("git://x.py", git_args=GitArgs(git_repo=url)))
    )
    ses.wait_for_state(hanging.id, S.LOADING, TIMEOUT)
    summary = ses.prepare(PrepareProcessCommand(script("hello.py"), ProcedureInput()))
    ses.wait_for_state(summary.id, S.READY, TIMEOUT)
    ses.start(StartProcessCommand(summary.id, "main", ProcedureInput()))
    assert ses.wait_for_state(summary.id, FINAL, TIMEOUT).state is S.COMPLETE
    assert ses.summarise([hanging.id])[0].state is S.LOADING


def test_a_script_missing_from_the_repository_fails_clearly(git_ses, repo):
    ses = git_ses()
    summary = ses.prepare(PrepareProcessCommand(repo.script("scripts/absent.py")))
    final = ses.wait_for_state(summary.id, FINAL, TIMEOUT)
    assert final.state is S.FAILED
    assert "scripts/absent.py is not in repository" in final.history.stacktrace


@pytest.mark.parametrize(
    "git_args, message",
    [
        ({"git_repo": "https://gitlab.com/other/repo.git"}, "not an allowed script source"),
        ({"git_repo": "-uhttps://x"}, "not an acceptable repository URL"),
        ({"git_repo": "ext::sh -c touch% /tmp/pwned"}, "not an acceptable repository URL"),
        ({"git_repo": "/local/path"}, "must be an https://"),
        ({"git_repo": "REPO/../elsewhere"}, "must not contain '.' or '..'"),
        ({"git_repo": "REPO/%2e%2e/elsewhere"}, "must not contain"),
        ({"git_repo": "REPO/./x"}, "must not contain"),
        ({"git_repo": "REPO?x=1"}, "must not contain"),
        ({"git_branch": "--upload-pack=touch /tmp/pwned"}, "not a valid branch name"),
        ({"git_branch": "a..b"}, "not a valid branch name"),
        ({"git_commit": "-c"}, "must be a commit hash"),
        ({"git_commit": "main"}, "must be a commit hash"),
    ],
)
def test_bad_repositories_and_arguments_are_refused_before_any_git_command(
    git_ses, repo, tmp_path, git_args, message
):
    args = {"git_repo": repo.url, **git_args}
    args["git_repo"] = args["git_repo"].replace("REPO", repo.url)
    with pytest.raises(ScriptRejectedError, match=message):
        git_ses().prepare(
            PrepareProcessCommand(GitScript("git://scripts/plain.py", git_args=GitArgs(**args)))
        )
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("uri", ["git://../outside.py", "git:///etc/passwd", "git://a//b.py"])
def test_paths_out_of_the_repository_are_refused(uri):
    with pytest.raises(ValueError, match="relative path inside the repository"):
        GitScript(uri)


def test_git_scripts_are_refused_when_no_repository_is_allowed(make_service, repo):
    ses = make_service()
    with pytest.raises(ScriptRejectedError, match="none are configured"):
        ses.prepare(PrepareProcessCommand(repo.script("scripts/plain.py")))


def test_environments_beyond_the_bound_are_pruned_and_can_be_deleted(git_ses, repo, tmp_path):
    from ska_oso_oet.procedure.environment import EnvironmentManager

    ses = git_ses(max_environments=1)
    envs = tmp_path / "cache" / "envs"
    run_script(ses, repo.script("scripts/uses_dep.py", create_env=True, git_commit=repo.first))
    (first,) = [p.name for p in envs.iterdir() if p.is_dir()]
    run_script(ses, repo.script("scripts/uses_dep.py", create_env=True, git_commit=repo.second))
    (second,) = [p.name for p in envs.iterdir() if p.is_dir()]  # the first was pruned
    assert first != second and second.endswith(repo.second[:12])
    manager = EnvironmentManager(base_dir=str(envs))
    with pytest.raises(ValueError, match="not an environment name"):
        manager.delete_env("../clones")
    manager.delete_env(second)
    assert not (envs / second).exists()


def test_an_environment_in_use_is_not_deleted(git_ses, repo, tmp_path):
    from ska_oso_oet.procedure.environment import EnvironmentManager

    ses = git_ses()
    summary = ses.prepare(
        PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True))
    )
    assert ses.wait_for_state(summary.id, [S.READY, *FINAL], 60).state is S.READY
    envs = tmp_path / "cache" / "envs"
    (name,) = [p.name for p in envs.iterdir() if p.is_dir()]
    with pytest.raises(RuntimeError, match="in use"):
        EnvironmentManager(base_dir=str(envs)).delete_env(name)


def test_requirements_may_include_files_and_relative_paths_of_the_repository(
    git_ses, tmp_path, recorder
):
    told = recorder("test.git")
    repo = Repo(tmp_path, "-r requirements/base.txt")
    (repo.path / "wheels").mkdir()
    make_wheel(repo.path / "wheels")
    repo.commit("requirements/base.txt", "./wheels/localdep-1.0-py3-none-any.whl\n")
    _, stacktrace = run_script(git_ses(), repo.script("scripts/uses_dep.py", create_env=True))
    assert stacktrace is None
    assert told.wait(1)[0]["value"] == "from localdep 1.0"


def test_a_dependency_clashing_with_the_server_says_why(git_ses, tmp_path):
    repo = Repo(tmp_path, "psutil<1")  # the server has a newer psutil
    ses = git_ses()
    summary = ses.prepare(
        PrepareProcessCommand(repo.script("scripts/uses_dep.py", create_env=True))
    )
    final = ses.wait_for_state(summary.id, FINAL, 60)
    assert final.state is S.FAILED
    assert "held at the server's version" in final.history.stacktrace


def test_a_cached_commit_does_not_wait_for_a_clone_of_another(git_ses, repo, tmp_path, recorder):
    from ska_oso_oet.procedure.gitmanager import file_lock, repository_key

    told = recorder("test.git")
    ses = git_ses()
    run_script(ses, repo.script("scripts/plain.py", git_commit=repo.first))  # now cached
    repo_dir = tmp_path / "cache" / "clones" / repository_key(repo.url)
    # another process is cloning the second commit (and holds the repository's pruning lock)
    with file_lock(str(repo_dir / ".lock")), file_lock(str(repo_dir / f".lock-{repo.second}")):
        cached = ses.prepare(
            PrepareProcessCommand(repo.script("scripts/plain.py", git_commit=repo.first))
        )
        assert ses.wait_for_state(cached.id, [S.READY, *FINAL], 5).state is S.READY
        waiting = ses.prepare(
            PrepareProcessCommand(repo.script("scripts/plain.py", git_commit=repo.second))
        )
        ses.wait_for_state(waiting.id, S.LOADING, 5)
    assert ses.wait_for_state(waiting.id, [S.READY, *FINAL], TIMEOUT).state is S.READY
    assert told.wait(1)[0]["value"] == "first"


# -- git through GitPython --------------------------------------------------------------------


def running_with(text: str) -> list[int]:
    """PIDs of live processes whose command line holds ``text`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize(
    "commit, op", [(None, "ls-remote"), ("0123456789abcdef0123456789abcdef01234567", "clone")]
)
def test_a_hung_git_is_killed_with_its_helpers_within_the_git_timeout(
    silent_server, tmp_path, no_leftover_processes, commit, op
):
    from ska_oso_oet.procedure import gitmanager, proctree

    url = f"http://127.0.0.1:{silent_server}/scripts.git"
    settings = gitmanager.GitSettings(cache_dir=str(tmp_path / "cache"), git_timeout=2)
    started = time.monotonic()
    with pytest.raises(
        gitmanager.GitError, match=f"git {op} of repository {url} timed out after 2 s"
    ):
        gitmanager.checkout(GitArgs(git_repo=url, git_commit=commit), settings)
    assert time.monotonic() - started < 10
    # git-remote-http, which waited on the server, went with git (its command line names the URL)
    assert proctree.poll_until(lambda: not running_with(url), 5), running_with(url)
    repo_dir = tmp_path / "cache" / "clones" / gitmanager.repository_key(url)
    if commit is None:  # asked of the remote, before anything is made
        assert not repo_dir.exists()
    else:  # the half-made clone was removed
        assert [p.name for p in repo_dir.iterdir()] == [f".lock-{commit}"]


def test_gitpython_refuses_option_like_and_ext_values_that_reach_it(repo, tmp_path):
    """Second line of defence: values that check_git_args would refuse never reach git, but
    GitPython's own checks refuse them too, before git starts."""
    from ska_oso_oet.procedure.gitmanager import GitError, run_git

    pwned = tmp_path / "pwned"
    for args, refused in [
        (["ls-remote", "--", f"--upload-pack=touch {pwned}", "HEAD"], "--upload-pack"),
        (["ls-remote", "--", f"ext::sh -c touch% {pwned}", "HEAD"], "ext::"),
        (["clone", "--quiet", "--", f"-utouch {pwned}", str(tmp_path / "c")], "-u"),
        (["clone", "--quiet", "--", f"ext::sh -c touch% {pwned}", str(tmp_path / "c")], "ext::"),
        (["clone", "--config=core.sshCommand=x", "--", repo.url, str(tmp_path / "c")], "--config"),
    ]:
        with pytest.raises(
            GitError, match=f"git {args[0]} of repository r was refused: .*{refused}"
        ):
            run_git(args, "r", 5)
    assert not pwned.exists() and not (tmp_path / "c").exists()
    # what is not refused runs
    assert run_git(["ls-remote", "--", repo.url, "HEAD"], "r", 5).split("\t")[0] == repo.second


def python_without(path: Path, code: str) -> str:
    """Run ``code`` in a new interpreter whose PATH is ``path`` only; return its output."""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": str(path), "HOME": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_worker_imports_without_git_and_a_git_script_then_says_git_is_missing(tmp_path):
    out = python_without(
        tmp_path,
        "import sys\n"
        "import ska_oso_oet.procedure.worker\n"
        "from ska_oso_oet.procedure import gitmanager\n"
        "print('git' in sys.modules)\n"  # GitPython is imported only by a git command
        "try:\n"
        "    gitmanager.resolve_commit(gitmanager.GitArgs(git_repo='file:///x'), 5)\n"
        "except gitmanager.GitError as exc:\n"
        "    print(exc)\n",
    )
    assert out.splitlines()[0] == "False"
    assert "git ls-remote of repository file:///x could not run: git is not installed" in out


def test_git_is_not_run_where_a_hung_git_could_not_be_killed_with_its_helpers(repo, tmp_path):
    import shutil

    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git"))  # no pgrep, no ps
    out = python_without(
        only_git,
        "from ska_oso_oet.procedure import gitmanager\n"
        "try:\n"
        f"    gitmanager.resolve_commit(gitmanager.GitArgs(git_repo={repo.url!r}), 5)\n"
        "except gitmanager.GitError as exc:\n"
        "    print(exc)\n",
    )
    assert "was not run" in out and "neither pgrep nor ps is installed" in out
