"""Starts grandchildren: one in the worker's process group, one in a session of its own."""

import os
import subprocess
import sys
import time

from pubsub import pub

CHILD = "import time; time.sleep(600)"


def main():
    same_group = subprocess.Popen([sys.executable, "-c", CHILD])
    own_session = subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    pub.sendMessage(
        "test.spawned",
        msg_src="spawner",
        pids=[same_group.pid, own_session.pid],
        worker=os.getpid(),
    )
    time.sleep(600)
