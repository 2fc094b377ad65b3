import os


def main(code=3):
    os._exit(code)
