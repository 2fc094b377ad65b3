"""Waits for a pub/sub message that another script sends, and reports it to the server."""

import threading

from pubsub import pub

RECEIVED = threading.Event()
MESSAGES = []


def on_relay(msg_src, text):
    MESSAGES.append((msg_src, text))
    RECEIVED.set()


def init():
    pub.subscribe(on_relay, "test.relay")


def main():
    pub.sendMessage("test.listening", msg_src="listener", ready=True)
    got = RECEIVED.wait(20)
    pub.sendMessage("test.relayed", msg_src="listener", messages=MESSAGES if got else [])
