"""Scripts that misbehave in ways a supervisor must survive."""

import asyncio
import os
import sys


async def coroutine(value=None):
    await asyncio.sleep(0)
    from pubsub import pub

    pub.sendMessage("test.async", msg_src="misbehaving", value=value)


def forks():
    # The forked child returns from the script too: it must not speak for the worker.
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)


def unpicklable():
    from pubsub import pub

    pub.sendMessage("test.unpicklable", msg_src="misbehaving", value=lambda: None)


def closes_its_pipe():
    os.closerange(3, 1024)


def keyboard_interrupt():
    raise KeyboardInterrupt


def floods_stdout():
    for i in range(20000):
        print("line", i)
    sys.stdout.flush()


def main():
    pass
