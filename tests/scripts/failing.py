"""init works; main raises."""


def init():
    pass


def main():
    raise RuntimeError("the telescope is on fire")
