"""The one child-process runner (snapshots/children.py): real children, real signals."""

from __future__ import annotations

import os
import sys
import time

from chromasnap.snapshots import children

SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
GRANDCHILD = """
import subprocess, sys, time
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(p.pid, flush=True)
time.sleep(60)
"""


def test_a_signal_exit_is_named() -> None:
    done = children.run([sys.executable, "-c", SEGFAULT], timeout=60)
    assert done.returncode == -11 and done.signal == "SIGSEGV" and not done.timed_out
    assert children.signal_name(-6) == "SIGABRT" and children.signal_name(0) is None


def test_a_timeout_kills_the_whole_group() -> None:
    done = children.run([sys.executable, "-c", GRANDCHILD], timeout=3)
    assert done.timed_out and done.signal is None  # our kill is a timeout, not a verdict
    grandchild = int(done.stdout.split()[0])
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"pid {grandchild} outlived its group's kill")


def test_output_and_exit_code_of_a_normal_child() -> None:
    done = children.run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout=60)
    assert (done.returncode, done.stdout.strip(), done.signal) == (3, "out", None)
    assert children.chromadb_version_of(sys.executable) == children.installed_version("chromadb")
