"""Ignores SIGTERM and keeps running: only SIGKILL ends it."""

import os
import signal
import time

from pubsub import pub


def main():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pub.sendMessage("test.sleeping", msg_src="stubborn", pid=os.getpid())
    while True:
        try:
            time.sleep(600)
        except BaseException:
            pass
