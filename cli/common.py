"""Options every command shares, error handling, and output helpers."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:  # the import itself waits for the first command that needs it (start-up time)
    from chromasnap.snapshots import SnapshotManager

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", envvar="CHROMASNAP_DB", help="Chroma database directory.", show_default=False),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="CHROMASNAP_STORE",
        help="Snapshot store: a directory or s3://bucket/prefix (default: <db parent>/<db name>.snapshots).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
ForeignOpt = Annotated[
    bool,
    typer.Option(
        "--allow-foreign-owner",
        envvar="CHROMASNAP_ALLOW_FOREIGN_OWNER",
        help="Read a store owned by another user (refused by default: they could have crafted it).",
    ),
]
# --- encryption (issue 17): how every command gets an encrypted store's password -----------
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="File whose first line is the store's password (if it is encrypted); else "
        "CHROMASNAP_PASSWORD_FILE, CHROMASNAP_PASSWORD_COMMAND, CHROMASNAP_PASSWORD, a prompt.",
        show_default=False,
    ),
]


def password_source(password_file: Path | None, confirm: bool = False) -> Callable[[], str]:
    """Reads the password only when an encrypted store is opened (never from argv);
    `confirm` asks twice at a terminal (a new store's password)."""

    def read() -> str:
        from chromasnap.snapshots.password import read_password

        return read_password(password_file=password_file, confirm=confirm)

    return read


def mirror_password_source(password_file: Path | None) -> Callable[[], str]:
    """An encrypted mirror's password: CHROMASNAP_MIRROR_PASSWORD*, else the store's own
    (`--password-file`, CHROMASNAP_PASSWORD*); never a prompt (docs/encryption.md)."""

    def read() -> str:
        from chromasnap.snapshots.password import read_mirror_password

        return read_mirror_password(password_file=password_file)

    return read


# --- end encryption --------------------------------------------------------------------------

PythonOpt = Annotated[
    str | None,
    typer.Option("--python", help="Probe with this interpreter (e.g. a venv with another chromadb)."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", min=1, help="Seconds before a probe is killed (120 + 0.5 per collection)."),
]

# The retention rules, given to `policy set` (stored) and `prune` (this run only)
KeepLast = Annotated[int | None, typer.Option("--keep-last", help="Keep the N newest snapshots.")]
KeepHourly = Annotated[int | None, typer.Option("--keep-hourly", help="Newest of each of the last N hours.")]
KeepDaily = Annotated[int | None, typer.Option("--keep-daily", help="Newest of each of the last N days.")]
KeepWeekly = Annotated[int | None, typer.Option("--keep-weekly", help="Newest of each of the last N weeks.")]
KeepMonthly = Annotated[
    int | None, typer.Option("--keep-monthly", help="Newest of each of the last N months.")
]
KeepYearly = Annotated[int | None, typer.Option("--keep-yearly", help="Newest of each of the last N years.")]
KeepWithin = Annotated[
    str | None, typer.Option("--keep-within", help="Everything within e.g. 7d12h of the newest.")
]
KeepTag = Annotated[
    list[str] | None, typer.Option("--keep-tag", help="Snapshots with this tag (repeatable).")
]
KeepReplaced = Annotated[
    str | None,
    typer.Option("--keep-replaced", help="Replaced databases to keep: a count (3) or a duration (14d)."),
]


def rules_from(
    keep_last: int | None,
    keep_hourly: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    keep_within: str | None,
    keep_tag: list[str] | None,
    keep_replaced: str | None,
) -> dict[str, object]:
    """The flags that were given, as policy fields."""
    given = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within,
        "keep_tags": keep_tag,
        "keep_replaced": keep_replaced,
    }
    return {k: v for k, v in given.items() if v is not None}


F = TypeVar("F", bound=Callable[..., Any])

_ESCAPES: dict[int, str] = {
    c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))
} | {  # bidi overrides and line separators reorder or break what the terminal shows
    c: f"\\u{c:04x}"
    for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
}


def shown(value: object, markup: bool = False) -> str:
    """How anything read from a store (a tag, a reason, a path, a record id, an error
    naming them) is printed: as text, with control characters shown escaped (``\\x1b``),
    so it can neither move the cursor, retitle the terminal, hyperlink nor reorder what is
    shown; with `markup`, also escaped for rich (``[/oops]`` stays text). `--json` output
    needs none of this: JSON escapes control characters itself."""
    out = str(value).translate(_ESCAPES)
    if markup:
        from rich.markup import escape

        out = escape(out)
    return out


def console(stderr: bool = False) -> Any:
    """A rich Console that prints no emoji codes (``:x:`` in a tag stays text)."""
    from rich.console import Console

    return Console(stderr=stderr, emoji=False)


def fail(message: str, code: int) -> None:
    line = shown(message)
    typer.echo(f"chromasnap: {line if len(line) <= 2000 else line[:2000] + '…'}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn every failure into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from chromasnap.manifest import ManifestError
        from chromasnap.snapshots import ChromasnapError

        debug = bool(kwargs.get("debug"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ChromasnapError as exc:
            if debug:
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except ManifestError as exc:
            if debug:
                traceback.print_exc()
            fail(str(exc), 1)
        except KeyboardInterrupt:
            fail("interrupted; nothing partial was left in the store", 130)
        except OSError as exc:
            if debug:
                traceback.print_exc()
            where = f": {exc.filename}" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}", 1)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            fail(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)", 1)

    return wrapper  # type: ignore[return-value]


# --- remote stores (issue 16): set by the app's global options (app.py), read by manager() ---
REMOTE: dict[str, Any] = {"endpoint_url": None, "no_cas": None, "connections": None}
"""`chromasnap --endpoint-url URL --no-cas --connections N COMMAND ...` (or AWS_ENDPOINT_URL,
CHROMASNAP_NO_CAS, CHROMASNAP_CONNECTIONS): how remote stores of this run are reached."""


def manager(
    db: Path | None,
    store: str | Path | None,
    allow_foreign_owner: bool = False,
    password_file: Path | None = None,
    confirm_password: bool = False,
) -> SnapshotManager:
    """The SnapshotManager of the options; what it found and left alone (a swap journal
    that is not this database's own) is printed as warnings."""
    from chromasnap.snapshots import SnapshotManager  # lazy: `--help` and typos stay fast

    mgr = SnapshotManager(
        db,
        store,
        allow_foreign_owner=allow_foreign_owner or None,
        password=password_source(password_file, confirm_password),
        mirror_password=mirror_password_source(password_file),
        **REMOTE,
    )
    for warning in mgr.warnings:
        typer.echo(f"warning: {shown(warning)}", err=True)
    return mgr


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def dir_bytes(path: Path) -> int:
    """Apparent size of the regular files under `path`, never following a symlink."""
    import os
    import stat

    total = 0
    for top, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(top, f))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr when it is a terminal; a no-op otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        f"[bold]{label}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def summary(snap: Any) -> dict[str, Any]:
    """The fields `list --json` promises, plus a few more."""
    last = snap.last_verification
    return {
        "id": snap.id,
        "short_id": snap.short_id,
        "created_at": snap.created_at.isoformat(),
        "reason": snap.reason,
        "tags": snap.tags,
        "note": snap.note,
        "source": snap.source,
        "files": snap.totals.files,
        "logical_bytes": snap.totals.logical_bytes,
        "new_bytes": snap.totals.new_bytes,
        "collections": len(snap.wal.collections),
        "records": sum(c.records or 0 for c in snap.wal.collections),
        "last_verification": None if last is None else last.model_dump(mode="json"),
        "mirrored_to": sorted({e.detail for e in snap.events if e.kind == "mirrored"}),  # issue 16
    }
