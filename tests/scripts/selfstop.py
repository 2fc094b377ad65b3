"""Stops its own worker process (SIGSTOP) while loading: a worker that reads nothing."""

import os
import signal

os.kill(os.getpid(), signal.SIGSTOP)


def main():
    pass
