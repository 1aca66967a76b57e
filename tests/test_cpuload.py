"""What other processes take of the CPU while jscale times or trains: the arithmetic on fed readings, and a real
busy process seen from outside it."""

import subprocess
import sys
import time

import pytest

from jscale import cpuload


def test_other_processes_share_is_the_machines_busy_time_less_this_process_own(monkeypatch):
    """Over 2 s of wall on 2 cores, the machine busy 3.0 CPU-seconds of which this process 1.0: the others took
    2.0 / (2 s x 2 cores) = 50%."""
    readings = {"busy": [100.0, 103.0], "own": [10.0, 11.0], "wall": [50.0, 52.0]}
    monkeypatch.setattr(cpuload, "_busy_s", lambda: readings["busy"].pop(0))
    monkeypatch.setattr(cpuload, "_own_s", lambda: readings["own"].pop(0))
    monkeypatch.setattr(cpuload.time, "perf_counter", lambda: readings["wall"].pop(0))
    monkeypatch.setattr(cpuload, "cores", lambda: 2)
    assert cpuload.Others().share() == pytest.approx(0.5)
    assert cpuload.note(0.5, "slower") == "other processes used 50% of the 2 cores meanwhile: slower"
    assert cpuload.note(0.04, "slower") == "" and cpuload.note(None, "slower") == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_process_beside_this_one_is_seen():
    """A child spinning one core for the whole window (not waited for: its time is not this process's) shows as at
    least ~a core's share of the machine; what else runs (another test worker) only adds to it."""
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        share = cpuload.now(1.5)
    finally:
        spin.wait()
    assert share is not None and share >= 0.8 / cpuload.cores()
