"""A script with init and main; each announces its arguments and the context it was given."""

from pubsub import pub

STATE = {}


def init(*args, **kwargs):
    STATE["init"] = (args, kwargs)
    pub.sendMessage("test.called", msg_src="with_init", fn="init", args=list(args), kwargs=kwargs)


def main(*args, context=None, **kwargs):
    pub.sendMessage(
        "test.called",
        msg_src="with_init",
        fn="main",
        args=list(args),
        kwargs=dict(kwargs, init=STATE["init"][1], qa=context.wait_for_qa_ready),
    )


def other(x):
    pub.sendMessage("test.called", msg_src="with_init", fn="other", args=[x], kwargs={})
