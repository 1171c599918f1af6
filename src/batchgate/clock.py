"""Wall-clock helpers: the API speaks Unix seconds."""

import time


def now() -> float:
    return time.time()


def now_s() -> int:
    return int(time.time())
