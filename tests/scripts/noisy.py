"""Catches Exception everywhere: a stop must still end it (StopScript is a BaseException)."""

import time


def main():
    while True:
        try:
            time.sleep(600)
        except Exception:
            pass
