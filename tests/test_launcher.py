"""The fork server: workers forked on request, exit codes reported, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from ska_oso_oet.procedure import launcher, proctree

OWNER = textwrap.dedent(
    """
    import json, sys
    from ska_oso_oet.procedure import launcher
    from ska_oso_oet.procedure.application import PrepareProcessCommand, ScriptExecutionService
    from ska_oso_oet.procedure.domain import FileSystemScript, ProcedureInput, ProcedureState

    ses = ScriptExecutionService(spare_workers=1)
    p = ses.prepare(PrepareProcessCommand(FileSystemScript(sys.argv[1]), ProcedureInput()))
    ses.wait_for_state(p.id, ProcedureState.READY, 20)
    print(json.dumps({"forkserver": launcher.get().pid}), flush=True)
    sys.stdin.read()
    """
)


def test_a_worker_reports_its_pid_then_its_exit_code():
    launcher.acquire([])
    try:
        server = launcher.get()
        pid, channel, status = server.spawn("test-worker")
        try:
            assert proctree.pid_alive(pid)
            assert server.pid in [p for p in _parents(pid)]
            channel.close()  # a worker whose supervisor has gone ends at once
            assert proctree.poll_until(lambda: _readable(status.fd), 10)
            status.read_exit()
            assert status.exitcode == 3 and not status.lost
        finally:
            status.close()
    finally:
        launcher.release()


def test_killing_the_owner_leaves_no_fork_server_and_no_worker(tmp_path):
    script = tmp_path / "idle.py"
    script.write_text("def main():\n    pass\n")
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, f"file://{script}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        forkserver = json.loads(owner.stdout.readline())["forkserver"]
        workers = [ref.pid for ref in proctree.descendants(forkserver)]
        assert len(workers) >= 2  # the prepared procedure's and a spare
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        assert proctree.poll_until(
            lambda: not any(proctree.pid_alive(p) for p in [forkserver, *workers]), 10
        ), "the fork server or a worker outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def _parents(pid: int) -> list[int]:
    with open(f"/proc/{pid}/stat") as f:
        return [int(f.read().rsplit(")", 1)[1].split()[1])]


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])
