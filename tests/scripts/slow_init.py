import time


def init(seconds=0.3):
    time.sleep(seconds)


def main():
    pass
