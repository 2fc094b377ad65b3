"""Starts a process that keeps forking: children in its own group, and double-forked daemons in
sessions of their own, each writing its PID to a file, until 300 exist or it is killed."""

import subprocess
import sys
import time

from pubsub import pub

SPREADER = r"""
import os, sys, time
pids, marker = sys.argv[1], sys.argv[2]
def note():
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\n")
note()
for i in range(300):
    if os.fork() == 0:
        if i % 3 == 0:  # a daemon: a session of its own, its parent gone at once
            os.setsid()
            if os.fork():
                os._exit(0)
        note()
        time.sleep(600)
        os._exit(0)
    time.sleep(0.01)
time.sleep(600)
"""


def main(pids_file, marker, wait=600):
    proc = subprocess.Popen([sys.executable, "-c", SPREADER, pids_file, marker])
    pub.sendMessage("test.spreading", msg_src="spreader", spreader=proc.pid)
    time.sleep(wait)
