"""Uses a multiprocessing Pool of functions defined in the script itself."""

import multiprocessing

from pubsub import pub


def square(x):
    return x * x


def main():
    with multiprocessing.Pool(3) as p:
        result = p.map(square, range(10))
    pub.sendMessage("test.pool", msg_src="pool", result=result)
