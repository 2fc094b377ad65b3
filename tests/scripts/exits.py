import sys


def main(code=0):
    sys.exit(code)
