"""The console script's entry: Ctrl-C while the CLI is still importing is one line, exit 130.

Importing typer, rich and the command modules takes a few hundred milliseconds on a loaded
machine; a SIGINT in that window would otherwise print Python's traceback. Nothing has been
written yet, so exiting at once is safe; `app.main` then handles Ctrl-C itself."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_while_starting(_sig: int, _frame: FrameType | None) -> None:
    sys.stderr.write("chromasnap: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    """Run the CLI with Ctrl-C during start-up handled."""
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .app import main as run

    signal.signal(signal.SIGINT, previous)
    run()
