"""Where a store's password comes from. Never a command-line argument, never written anywhere.

The first of: a password file given on the command line (`--password-file`), the file named by
CHROMASNAP_PASSWORD_FILE, the first line printed by CHROMASNAP_PASSWORD_COMMAND (for secret
managers), CHROMASNAP_PASSWORD, then a prompt, only when stdin is a terminal. An empty
variable counts as unset. `prefix` names another set of variables (for example
CHROMASNAP_NEW for a new password, or the target of a copy).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import UsageError

MAX_PASSWORD_FILE = 64 * 1024
DEFAULT_COMMAND_TIMEOUT = 60.0


def read_password(
    *,
    password_file: str | os.PathLike[str] | None = None,
    prefix: str = "CHROMASNAP",
    confirm: bool = False,
    prompt: str = "Password: ",
    environ: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    option: str = "--password-file",
    interactive: bool = True,
) -> str:
    """The password, or UsageError (one line, never holding the password or a command's output).

    `confirm` asks twice at a prompt (for a new password). `timeout` bounds the command.
    `option` is the command-line option named in messages; `interactive=False` never prompts."""
    env = os.environ if environ is None else environ
    file_var, command_var, password_var = (
        f"{prefix}_PASSWORD_FILE",
        f"{prefix}_PASSWORD_COMMAND",
        f"{prefix}_PASSWORD",
    )
    if password_file is not None:
        return _from_file(Path(password_file), option)
    if env.get(file_var):
        return _from_file(Path(env[file_var]), file_var)
    if env.get(command_var):
        return _from_command(env[command_var], command_var, timeout)
    if env.get(password_var):
        return env[password_var]
    if interactive and sys.stdin is not None and sys.stdin.isatty():
        return _from_terminal(prompt, confirm)
    raise UsageError(
        f"no password: set {password_var}, {file_var} or {command_var}, or give {option} "
        f"({'there is no terminal to ask on' if interactive else 'it is never asked at a terminal here'})"
    )


MIRROR_PREFIX = "CHROMASNAP_MIRROR"


def read_mirror_password(
    *, password_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The password of an encrypted mirror (or of the encrypted store mirroring creates):
    CHROMASNAP_MIRROR_PASSWORD_FILE, _COMMAND or CHROMASNAP_MIRROR_PASSWORD, else the store's
    own (`password_file`, then CHROMASNAP_PASSWORD_FILE, _COMMAND, CHROMASNAP_PASSWORD).
    Never a prompt: mirroring runs after a snapshot, often with nobody at the terminal."""
    env = os.environ if environ is None else environ
    suffixes = ("_PASSWORD_FILE", "_PASSWORD_COMMAND", "_PASSWORD")
    if any(env.get(MIRROR_PREFIX + s) for s in suffixes):
        return read_password(prefix=MIRROR_PREFIX, environ=env, interactive=False)
    if password_file is not None or any(env.get("CHROMASNAP" + s) for s in suffixes):
        return read_password(password_file=password_file, environ=env, interactive=False)
    raise UsageError(
        "no password for the encrypted mirror: set CHROMASNAP_MIRROR_PASSWORD (or _FILE, _COMMAND) "
        "or CHROMASNAP_PASSWORD (or _FILE, _COMMAND); for a plain mirror create it first with "
        "`chromasnap init --no-encrypt --store URL`"
    )


def _first_line(raw: bytes, what: str) -> str:
    # surrogateescape, as os.environ does: bytes that are not UTF-8 stay the bytes given
    # (keys.password_bytes turns them back), so a password works the same from every source
    line = raw.decode("utf-8", "surrogateescape").split("\n", 1)[0].removesuffix("\r")
    if not line:
        raise UsageError(f"{what} holds no password (its first line is empty)")
    return line


def _from_file(path: Path, source: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the password file {path} ({source}): {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_FILE:
        raise UsageError(f"the password file {path} ({source}) is larger than 64 KiB: not a password file?")
    return _first_line(raw, f"the password file {path} ({source})")


def _from_command(command: str, var: str, timeout: float) -> str:
    """Run the command (split as a shell splits words, no shell; use `sh -c '…'` for pipes) in a
    session of its own, and take the first line it prints. stderr is captured and dropped."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"{var} cannot be split into words: {exc}") from None
    if not argv:
        raise UsageError(f"{var} is empty")
    program = os.path.basename(argv[0])
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout ends it and its children
        )
    except OSError as exc:
        raise UsageError(f"cannot run {var} (program {program!r}): {exc.strerror}") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        raise UsageError(f"{var} (program {program!r}) did not finish within {timeout:g} s") from None
    if proc.returncode < 0:
        raise UsageError(f"{var} (program {program!r}) was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise UsageError(
            f"{var} (program {program!r}) failed with exit code {proc.returncode}; output not shown"
        )
    return _first_line(out, f"the output of {var} (program {program!r})")


def _from_terminal(prompt: str, confirm: bool) -> str:
    try:
        first = getpass.getpass(prompt)
        if not first:
            raise UsageError("an empty password is not allowed")
        if confirm and getpass.getpass("Again: ") != first:
            raise UsageError("the passwords did not match")
    except EOFError:
        raise UsageError("no password given at the prompt") from None
    return first
