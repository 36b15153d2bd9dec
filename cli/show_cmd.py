"""`chromasnap show ID`: everything a snapshot records."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    StoreOpt,
    console,
    handle_errors,
    human_bytes,
    manager,
    print_json,
    shown,
)


@handle_errors
def show_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Show a snapshot: files, Chroma's write-ahead state per collection, verifications."""
    from chromasnap.snapshots.names import file_label, segment_names, segment_of

    s = manager(db, store, allow_foreign_owner, password_file).get(snapshot_id)
    names = segment_names([s])
    if json_out:
        data = s.model_dump(mode="json")
        for f in data["files"]:  # the segment id stays in `path`; `label` names the collection
            f["label"] = file_label(f["path"], names)
        print_json(data)
        return
    from rich.table import Table

    def m(value: object) -> str:  # store text inside rich markup
        return shown(value, markup=True)

    con = console()
    t, w = s.totals, s.wal
    con.print(f"[bold]snapshot[/] {s.id}")
    for k, v in (
        ("created", s.created_at.isoformat()),
        ("reason", s.reason),
        ("tags", ", ".join(s.tags) or "-"),
        ("note", s.note or "-"),
        ("source", f"{s.source} on {s.hostname}"),
        ("parent", s.parent or "-"),
        ("chromadb", s.chromadb_version or "unknown"),
        ("schema", ", ".join(f"{k}={v}" for k, v in sorted(w.schema_migrations.items())) or "-"),
        ("size", f"{human_bytes(t.logical_bytes)} in {t.files} files ({t.reused_files} unchanged)"),
        ("new", f"{human_bytes(t.new_bytes)} in {t.new_blobs} blobs"),
        (
            "journal",
            f"{w.journal_mode}; leftover: {', '.join(w.leftover_files) or 'none'}"
            + ("; HOT JOURNAL" if w.hot_journal else ""),
        ),
        ("queue", f"{w.queue_rows} rows; automatically_purge={w.automatically_purge}"),
    ):
        con.print(f"  {k:9} {m(v)}")
    if w.journal_action:
        con.print(f"  {'':9} {m(w.journal_action)}")
    ct = Table(title="collections", title_justify="left")
    for col in ("name", "records", "hnsw", "queued", "vector seq", "lag"):
        ct.add_column(col)
    for c in w.collections:
        vec = next((x for x in c.segments if x.scope == "VECTOR"), None)
        lag = "no" if not c.vector_lags else ("covered" if c.lag_covered else "NOT COVERED")
        ct.add_row(
            m(c.name),
            str(c.records),
            "-"
            if c.hnsw_elements is None
            else f"{c.hnsw_elements}" + ("" if c.hnsw_persisted else " (unpersisted)"),
            str(c.queue_rows),
            "-" if vec is None or vec.max_seq_id is None else str(vec.max_seq_id),
            lag,
        )
    con.print(ct)
    ft = Table(title="files", title_justify="left")
    wide = con.width >= 120  # room for the segment ids beside the collection names
    ft.add_column("file", overflow="fold")  # folded, never cut: rows must not differ out of sight
    if wide:
        ft.add_column("segment", overflow="fold")
    for col in ("size", "layout", "captured"):
        ft.add_column(col)
    for f in s.files:
        seg = segment_of(f.path, names)
        ft.add_row(
            m(file_label(f.path, names)),
            *([m(seg or "")] if wide else []),
            human_bytes(f.size),
            f.layout,
            f.captured_by,
        )
    con.print(ft)
    for sk in s.skipped:
        con.print(f"  skipped {m(sk.path)} ({m(sk.kind)}: {m(sk.reason)})")
    for warning in w.warnings:
        con.print(f"  [yellow]warning[/] {m(warning)}")
    if s.verifications:
        vt = Table(title="verifications", title_justify="left")
        for col in ("at", "mode", "verdict", "chromadb", "seconds", "detail"):
            vt.add_column(col)
        for ver in s.verifications:
            vt.add_row(
                ver.at.isoformat(),
                ver.mode,
                m(ver.verdict),
                m(ver.chromadb_version or "-"),
                f"{ver.duration_s:.1f}",
                m(ver.detail[:80]),
            )
        con.print(vt)
    else:
        con.print("  never verified")
    _ = typer  # keep the import for typer's annotations
