"""Starts a classic double-forked daemon in a session of its own, then returns or sleeps."""

import subprocess
import sys
import time

from pubsub import pub

DAEMON = (
    "import os, sys, time\n"
    "if os.fork(): os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "print(os.getpid(), flush=True)\n"
    "os.close(1)\n"
    "time.sleep(600)\n"
)


def _start_daemon():
    out = subprocess.run(
        [sys.executable, "-c", DAEMON],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return int(out.stdout.split()[0])


def init():
    global DAEMON_PID
    DAEMON_PID = _start_daemon()
    pub.sendMessage("test.daemon", msg_src="daemonizer", pid=DAEMON_PID)


def main(sleep=0):
    time.sleep(sleep)
