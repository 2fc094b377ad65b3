"""Sleeps in main until stopped; the finally block proves that SIGTERM raised inside it."""

import os
import time

from pubsub import pub


def main(marker_file=None, seconds=600):
    try:
        pub.sendMessage("test.sleeping", msg_src="sleeper", pid=os.getpid())
        time.sleep(seconds)
    finally:
        if marker_file:
            with open(marker_file, "w") as f:
                f.write("cleaned up")
