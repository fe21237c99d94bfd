"""The busy-machine meter the speed gates consult sees another process's load."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from busy import OthersMeter  # tests/benchmarks/busy.py


def test_the_meter_sees_a_busy_loop_in_another_process():
    meter = OthersMeter()
    if meter.start is None:
        pytest.skip("no /proc/stat here")
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        share = meter.share()
    finally:
        loop.kill()
        loop.wait()
    assert share is not None and share > 0.6 / os.cpu_count()  # one busy core of N is 1 / N of the machine
