"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time


def wait_quiet(max_s: float) -> None:
    """On a shared machine: wait (at most ``max_s`` seconds) until no other task has been runnable
    for about 2 s (Linux ``/proc/loadavg``); returns at once where that file does not exist or
    ``max_s <= 0``.

    Example:
        >>> wait_quiet(0)  # disabled
    """
    if max_s <= 0 or not os.path.exists("/proc/loadavg"):
        return
    t_end = time.monotonic() + max_s
    quiet = 0
    while time.monotonic() < t_end and quiet < 4:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        quiet = quiet + 1 if running <= 1 else 0  # 1 = this process reading the file
        time.sleep(0.5)
