"""Publishes large pub/sub messages, which the supervisor passes to every other worker."""

import time

from pubsub import pub


def main(count=5, size=2_000_000):
    for i in range(count):
        pub.sendMessage("test.big", msg_src="bigpub", index=i, data=b"y" * size)
    time.sleep(600)
