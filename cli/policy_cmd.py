"""`chromasnap policy show|set`: the store's retention rules."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    KeepDaily,
    KeepHourly,
    KeepLast,
    KeepMonthly,
    KeepReplaced,
    KeepTag,
    KeepWeekly,
    KeepWithin,
    KeepYearly,
    PasswordFileOpt,
    StoreOpt,
    handle_errors,
    manager,
    print_json,
    rules_from,
    shown,
)

policy_app = typer.Typer(help="Show or set the store's retention rules.", no_args_is_help=True)


@policy_app.command("show")
@handle_errors
def show_cmd(
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Print the retention rules."""
    p = manager(db, store, allow_foreign_owner, password_file).policy()
    if json_out:
        print_json(p.model_dump())
        return
    for k, v in p.model_dump().items():
        typer.echo(f"{k:14} {'-' if v in (None, []) else shown(v)}")


@policy_app.command("set")
@handle_errors
def set_cmd(
    keep_last: KeepLast = None,
    keep_hourly: KeepHourly = None,
    keep_daily: KeepDaily = None,
    keep_weekly: KeepWeekly = None,
    keep_monthly: KeepMonthly = None,
    keep_yearly: KeepYearly = None,
    keep_within: KeepWithin = None,
    keep_tag: KeepTag = None,
    keep_replaced: KeepReplaced = None,
    auto_prune: Annotated[
        bool | None,
        typer.Option("--auto-prune/--no-auto-prune", help="Prune after each before_write snapshot."),
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Clear every rule first.")] = False,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror", help="Copy each new snapshot to this store (s3://bucket/prefix or a directory)."
        ),
    ] = None,
    no_mirror: Annotated[bool, typer.Option("--no-mirror", help="Stop mirroring.")] = False,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Change the retention rules (flags not given stay as they are, unless --reset)."""
    from chromasnap.manifest import RetentionPolicy

    mgr = manager(db, store, allow_foreign_owner, password_file)
    base = RetentionPolicy() if reset else mgr.policy()
    update = rules_from(
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        keep_tag,
        keep_replaced,
    )
    if auto_prune is not None:
        update["auto_prune"] = auto_prune
    if mirror is not None or no_mirror:
        from chromasnap.snapshots.mirror import check_url

        update["mirror"] = None if no_mirror else check_url(str(mirror))
    p = mgr.set_policy(RetentionPolicy.model_validate({**base.model_dump(), **update}))
    if json_out:
        print_json(p.model_dump())
    else:
        typer.echo(
            "retention rules saved: " + shown(", ".join(f"{k}={v}" for k, v in p.model_dump().items() if v))
        )
