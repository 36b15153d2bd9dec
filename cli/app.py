"""The `chromasnap` command: one thin module per command over chromasnap.snapshots."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import REMOTE
from .copy_cmd import copy_cmd
from .demo_cmd import demo_cmd
from .diff_cmd import diff_cmd
from .export_cmd import export_cmd
from .extract_cmd import extract_cmd
from .find_cmd import find_cmd
from .health_cmd import health_cmd
from .init_cmd import init_cmd
from .kept_cmd import kept_cmd
from .key_cmd import key_app
from .list_cmd import list_cmd
from .mirror_cmd import mirror_cmd
from .peek_cmd import peek_cmd
from .pin_cmd import pin_cmd, unpin_cmd
from .policy_cmd import policy_app
from .prune_cmd import prune_cmd
from .recover_cmd import recover_cmd
from .restore_cmd import restore_cmd
from .rollforward_cmd import rollforward_cmd
from .schema_cmd import schema_cmd
from .show_cmd import show_cmd
from .snapshot_cmd import snapshot_cmd
from .stats_cmd import stats_cmd
from .unlock_cmd import unlock_cmd
from .verify_cmd import verify_cmd

app = typer.Typer(
    name="chromasnap",
    help="Versioned, deduplicated, crash-safe snapshots of Chroma databases.\n\n"
    "Exit codes: 0 ok, 1 the operation found a problem, 2 bad input or usage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(init_cmd)


@app.callback()
def remote_options(
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            envvar="AWS_ENDPOINT_URL",
            help="S3-compatible server of s3:// stores (MinIO, R2, Ceph...); default AWS S3.",
            show_default=False,
        ),
    ] = None,
    no_cas: Annotated[
        bool,
        typer.Option(
            "--no-cas",
            envvar="CHROMASNAP_NO_CAS",
            help="Accept a server that ignores conditional writes: lock objects instead of a lease "
            "(safe only while every writer takes the lock and clocks roughly agree).",
        ),
    ] = False,
    connections: Annotated[
        int | None,
        typer.Option(
            "--connections",
            envvar="CHROMASNAP_CONNECTIONS",
            min=1,
            max=256,
            help="Parallel requests to a remote store (default 8).",
            show_default=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            envvar="CHROMASNAP_NO_CACHE",
            help="Read a remote store's documents from the store, not the local metadata cache "
            "(in $XDG_CACHE_HOME/chromasnap).",
        ),
    ] = False,
) -> None:
    """Options for remote stores, given before the command: chromasnap --endpoint-url URL list ..."""
    REMOTE.update(endpoint_url=endpoint_url, no_cas=no_cas or None, connections=connections)
    if no_cache:  # every store this run opens (a mirror, copy's two sides): metacache.py reads it
        import os

        os.environ["CHROMASNAP_NO_CACHE"] = "1"


app.command("snapshot")(snapshot_cmd)
app.command("list")(list_cmd)
app.command("show")(show_cmd)
app.command("extract")(extract_cmd)
app.command("diff")(diff_cmd)
app.command("peek")(peek_cmd)
app.command("find")(find_cmd)
app.command("export")(export_cmd)
app.command("verify")(verify_cmd)
app.command("health")(health_cmd)
app.command("restore")(restore_cmd)
app.command("recover")(recover_cmd)
app.command("kept")(kept_cmd)
app.command("roll-forward")(rollforward_cmd)
app.command("prune")(prune_cmd)
app.command("pin")(pin_cmd)
app.command("unpin")(unpin_cmd)
app.command("stats")(stats_cmd)
app.command("copy")(copy_cmd)
app.command("mirror")(mirror_cmd)
app.command("unlock")(unlock_cmd)
app.add_typer(policy_app, name="policy")
app.add_typer(key_app, name="key")
app.command("schema")(schema_cmd)
app.command("demo")(demo_cmd)


def main() -> None:
    """Run the CLI; usage errors too are one line (exit 2), as every other error."""
    import sys

    try:
        rv = app(standalone_mode=False)
    except KeyboardInterrupt:  # before a command's own handler runs (typer still building it)
        typer.echo("chromasnap: interrupted; nothing partial was left in the store", err=True)
        sys.exit(130)
    except Exception as exc:
        # typer carries its own copy of click: recognise its exceptions by their shape
        fmt, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if type(exc).__name__ == "Abort":
            typer.echo("chromasnap: aborted", err=True)
            sys.exit(1)
        if callable(fmt) and isinstance(code, int):
            from .common import shown

            typer.echo(f"chromasnap: {shown(str(fmt()).replace(chr(10), ' '))}", err=True)
            sys.exit(code)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
