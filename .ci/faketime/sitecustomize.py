"""Loaded by every Python process of CI's faketime runs (this folder is put on PYTHONPATH there).

Debian 12's libfaketime (0.9.10) with FAKETIME_DONT_FAKE_MONOTONIC=1 hands the kernel a negative
deadline for clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which Python 3.11's time.sleep
uses, so every sleep fails with EINVAL (libfaketime issue 426). Faking the monotonic clock too
is worse: timed lock waits (threading.Event.wait) then wait for years. So the monotonic clock
stays real, and time.sleep waits on an event instead, which uses a relative timeout.
"""

import os
import threading
import time

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    _never_set = threading.Event()

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        _never_set.wait(seconds)

    time.sleep = _sleep
