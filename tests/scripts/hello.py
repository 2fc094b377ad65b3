"""A script with no init: main announces its arguments with pypubsub."""

from pubsub import pub


def main(*args, **kwargs):
    pub.sendMessage("test.hello", msg_src="hello", args=list(args), kwargs=kwargs)
