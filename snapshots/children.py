"""The one child-process runner: the probe, the collection child, the SQLite copy.

A child runs in a session of its own, so that it and anything it starts are killed as a
group (on a timeout, on Ctrl-C, and by the kernel when chromasnap itself dies); a signal
exit is classified by name (`-11` -> "SIGSEGV"), a verdict about the child and never a
crash of ours. Output is decoded leniently: a crash may print bytes of damaged files.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

PR_SET_PDEATHSIG = 1
CHILD_ENV = {"ANONYMIZED_TELEMETRY": "False", "PYTHONDONTWRITEBYTECODE": "1"}
"""No telemetry from chromadb, no .pyc written next to the child scripts."""


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when chromasnap dies (Linux PR_SET_PDEATHSIG),
    killed or crashed, so no child outlives it; it exits at once if that already happened.
    prctl is resolved here, before the fork: the child only calls into libc."""
    try:
        import ctypes  # only here: a preexec hook resolved before each fork

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the timeout and group kill remain
        return lambda: None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(cmd: Sequence[str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start a child in a session of its own (killable as a group, killed with chromasnap).
    `stdin` is /dev/null unless a child is driven through it (the SQLite copy holding its
    read lock). Raises OSError when the interpreter cannot be started."""
    return subprocess.Popen(
        list(cmd),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env={**os.environ, **CHILD_ENV},
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a child started by `spawn` and its own children."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def signal_name(returncode: int | None) -> str | None:
    """ "SIGSEGV" for a child killed by signal 11 (returncode -11); None for an exit."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclass
class Finished:
    """How a child run by `run` ended."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def signal(self) -> str | None:
        """The name of the signal that killed it, if one did (not our timeout's)."""
        return None if self.timed_out else signal_name(self.returncode)


def run(cmd: Sequence[str], timeout: float | None) -> Finished:
    """Run a child to its end, or kill its group after `timeout` seconds (then `timed_out`).
    Any other exception (Ctrl-C) kills the group too, then propagates. OSError when it
    cannot be started."""
    proc = spawn(cmd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return Finished(proc.returncode, out or "", err or "", timed_out=True)
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    return Finished(proc.returncode, out or "", err or "")


def installed_version(dist: str) -> str | None:
    """The version of a distribution installed beside chromasnap (this interpreter)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def chromadb_version_of(python: str) -> str | None:
    """chromadb's version in another interpreter, without importing it."""
    cmd = [python, "-c", "import importlib.metadata as m; print(m.version('chromadb'))"]
    try:
        done = run(cmd, timeout=15)
    except OSError:
        return None
    if done.timed_out or done.returncode != 0:
        return None
    return done.stdout.strip() or None
