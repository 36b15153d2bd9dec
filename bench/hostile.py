"""Crafted stores: what someone who can write a store could put in it, built with the real
format (docs/format.md: snapshot ids recomputed, packs and index files as chromasnap writes
them). Used by tests/test_hostile.py and bench/torture.py's bad inputs.

Each builder takes a `Base` (a database, a pristine store holding snapshots of it, and a
scratch folder), makes its own copy of the store (and of the database where the command
names it), crafts it, and returns a `Case`: the CLI arguments, the exit code and a text
the one stderr line must hold, and a `check` saying what the command must not have
touched (an empty string when all is well).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from blake3 import blake3

from chromasnap.manifest import snapshot_id
from chromasnap.snapshots.pack import PackFile, pack_name

ESC = "\x1b"
BOMB = 1 << 30
"""What a decompression bomb inflates to (its frame is about 40 kB)."""


@dataclass
class Base:
    db: Path
    store: Path
    work: Path
    ids: list[str]
    """The pristine store's snapshot ids, oldest first."""


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    text: str
    check: Callable[[], str] = lambda: ""
    stderr_lines: int = 1
    out: str = ""
    """Text stdout must hold."""


def tree(root: Path) -> dict[str, bytes]:
    """Regular files under `root` by relative path (symlinks and special files left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


class Crafter:
    """Writes into a store as its attacker would: plain files, in the real format."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def doc(self, sid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.store / "snapshots" / f"{sid}.json").read_text())
        return data

    def save(self, doc: dict[str, Any]) -> str:
        """Write `doc` under its recomputed id (as a valid, crafted snapshot)."""
        doc["id"] = snapshot_id(doc)
        (self.store / "snapshots" / f"{doc['id']}.json").write_text(json.dumps(doc))
        return str(doc["id"])

    def blob(
        self, data: bytes, btype: str = "data", body: bytes | None = None, raw_length: int | None = None
    ) -> str:
        """A new pack holding one blob, and an index file naming it; its key."""
        key = blake3(data).hexdigest()
        if body is None:
            body = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data)
        return self.raw_blob(key, btype, body, len(data) if raw_length is None else raw_length)

    def raw_blob(self, key: str, btype: str, body: bytes, raw_length: int, offset: int | None = None) -> str:
        tmp = self.store / "tmp"
        tmp.mkdir(exist_ok=True)
        pack = PackFile(tmp)
        pack.add(key, btype, body, raw_length)
        pid, local = pack.finish()
        dest = self.store / pack_name(pid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)
        rows = [[k, t, o if offset is None else offset, n, r] for k, t, o, n, r in pack.blobs]
        self.index({"version": 1, "packs": [{"id": pid, "size": pack.size, "blobs": rows}]})
        return key

    def index(self, doc: Any) -> Path:
        raw = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        path = self.store / "index" / f"{blake3(raw).hexdigest()}.json"
        path.write_bytes(raw)
        return path

    def chunk_list(self, doc: dict[str, Any]) -> str:
        return self.blob(json.dumps({"list": doc}, separators=(",", ":")).encode(), "list")

    def with_file(self, sid: str, **entry: Any) -> str:
        """A snapshot like `sid` whose first file is replaced by `entry`'s fields."""
        doc = self.doc(sid)
        doc["files"][0].update(entry)
        return self.save(doc)


def _copy(base: Base, name: str, db: bool = False) -> tuple[Path, Path | None]:
    store = base.work / f"{name}-store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base.store, store, symlinks=True)
    dbc = None
    if db:
        dbc = base.work / f"{name}-db"
        shutil.rmtree(dbc, ignore_errors=True)
        shutil.copytree(base.db, dbc, symlinks=True)
    return store, dbc


def _victim(base: Base, name: str) -> tuple[Path, Callable[[], str]]:
    """A folder outside everything, with a file; and a check that both are intact."""
    victim = base.work / f"{name}-victim"
    shutil.rmtree(victim, ignore_errors=True)
    victim.mkdir()
    (victim / "precious.txt").write_text("precious")
    before = tree(victim)

    def check() -> str:
        if not victim.is_dir() or tree(victim) != before:
            return f"{victim} was changed"
        return ""

    return victim, check


def _both(*checks: Callable[[], str]) -> Callable[[], str]:
    return lambda: "; ".join(x for x in (c() for c in checks) if x)


def _db_intact(db: Path) -> Callable[[], str]:
    before = tree(db)
    return lambda: "" if tree(db) == before else f"the database {db} was changed"


# --- swap journals ---------------------------------------------------------------------


def journal_in_snapshot(base: Base) -> Case:
    """A snapshot whose files include `.chromasnap-swap.json`: restoring it would plant a
    journal that the next command replays (it deleted a folder outside the database)."""
    store, db = _copy(base, "journal-in-snapshot", db=True)
    assert db is not None
    victim, intact = _victim(base, "journal-in-snapshot")
    c = Crafter(store)
    doc = c.doc(base.ids[-1])
    journal = {
        "version": 1,
        "kind": "entries",
        "db": str(db),
        "staging": str(victim),
        "kept": str(victim / "kept"),
        "old": {"chroma.sqlite3": 1},
        "new": {"precious.txt": (victim / "precious.txt").stat().st_ino},
    }
    data = json.dumps(journal).encode()
    lst = c.chunk_list(
        {
            "layout": "plain",
            "size": len(data),
            "extents": [{"offset": 0, "chunks": [[c.blob(data), len(data)]]}],
        }
    )
    planted = dict(doc["files"][0], path=".chromasnap-swap.json", size=len(data), data_bytes=len(data))
    planted.update(hash=blake3(data).hexdigest(), chunk_list=lst, layout="plain", hash_kind="content")
    doc["files"].append(planted)
    sid = c.save(doc)
    args = ["restore", sid, "--yes", "--no-verify", "--no-backup", "--db", str(db), "--store", str(store)]
    return Case("journal-in-snapshot", args, 1, "reserved for chromasnap", _both(intact, _db_intact(db)))


def journal_beside_db(base: Base) -> Case:
    """A journal beside the database naming a folder outside it as the staged copy."""
    store, db = _copy(base, "journal-beside", db=True)
    assert db is not None
    victim, intact = _victim(base, "journal-beside")
    record = {
        "version": 1,
        "kind": "dir",
        "db": str(db),
        "staging": str(victim),
        "kept": str(db.parent / f"{db.name}.replaced-20260101T000000Z"),
        "old_ino": 1,
        "new_ino": victim.stat().st_ino,
    }
    (db.parent / f".{db.name}.chromasnap-swap.json").write_text(json.dumps(record))
    args = ["list", "--db", str(db), "--store", str(store), "--json"]
    return Case("journal-beside-db", args, 0, "ignored the swap journal", _both(intact, _db_intact(db)))


def journal_entries_in_db(base: Base) -> Case:
    """A mount-mode journal inside the database that would move its files out into a
    folder elsewhere and an attacker's file in."""
    store, db = _copy(base, "journal-entries", db=True)
    assert db is not None
    victim, intact = _victim(base, "journal-entries")
    evil = base.work / "journal-entries-evil"
    shutil.rmtree(evil, ignore_errors=True)
    evil.mkdir()
    (evil / "evil.py").write_text("import os")
    record = {
        "version": 1,
        "kind": "entries",
        "db": str(db),
        "staging": str(evil),
        "kept": str(victim),
        "old": {"chroma.sqlite3": (db / "chroma.sqlite3").stat().st_ino},
        "new": {"evil.py": (evil / "evil.py").stat().st_ino},
    }
    (db / ".chromasnap-swap.json").write_text(json.dumps(record))
    journal = db / ".chromasnap-swap.json"
    db_check = _db_intact(db)

    def evil_stays() -> str:
        return "" if (evil / "evil.py").exists() and journal.exists() else "the journal was acted upon"

    args = ["list", "--db", str(db), "--store", str(store), "--json"]
    return Case(
        "journal-entries-in-db", args, 0, "ignored the swap journal", _both(intact, db_check, evil_stays)
    )


# --- modes -------------------------------------------------------------------------------


def setuid_modes(base: Base) -> Case:
    """Modes with setuid, setgid and sticky bits: extracted without them."""
    store, _ = _copy(base, "modes")
    c = Crafter(store)
    doc = c.doc(base.ids[-1])
    doc["files"][0]["mode"] = 0o4777
    doc["root_mode"] = 0o1777
    for d in doc["dirs"]:
        d["mode"] = 0o2777
    sid = c.save(doc)
    out = base.work / "modes-out"
    shutil.rmtree(out, ignore_errors=True)

    def no_special_bits() -> str:
        for p in [out, *out.rglob("*")]:
            if stat.S_IMODE(p.lstat().st_mode) & 0o7000:
                return f"{p} has mode {stat.S_IMODE(p.lstat().st_mode):o}"
        return ""

    return Case("setuid-modes", ["extract", sid, str(out), "--store", str(store)], 0, "", no_special_bits, 0)


def mode_out_of_range(base: Base) -> Case:
    store, _ = _copy(base, "mode-range")
    c = Crafter(store)
    sid = c.with_file(base.ids[-1], mode=0o177777)
    return Case("mode-out-of-range", ["show", sid, "--store", str(store)], 1, "files.0.mode")


# --- store folders and files --------------------------------------------------------------


def packs_symlink_prune(base: Base) -> Case:
    """`packs` a symlink to another folder: prune must not delete that folder's files."""
    store, _ = _copy(base, "packs-symlink")
    victim, _ = _victim(base, "packs-symlink")
    shutil.copytree(store / "packs", victim, dirs_exist_ok=True)
    shutil.rmtree(store / "packs")
    (store / "packs").symlink_to(victim)
    before = tree(victim)
    c = _both(lambda: "" if tree(victim) == before else f"{victim} was changed")
    args = ["prune", "--keep-last", "1", "--store", str(store)]
    return Case("packs-symlink-prune", args, 1, "packs in store", c)


def packs_symlink_snapshot(base: Base) -> Case:
    """`packs` a symlink: a snapshot must not write packs into the other folder."""
    store, db = _copy(base, "packs-snap", db=True)
    assert db is not None
    victim, intact = _victim(base, "packs-snap")
    shutil.rmtree(store / "packs")
    (store / "packs").symlink_to(victim)
    (db / "extra.bin").write_bytes(os.urandom(70000))  # something new to store
    return Case(
        "packs-symlink-snapshot",
        ["snapshot", "--db", str(db), "--store", str(store)],
        1,
        "packs in store",
        intact,
    )


def snapshots_symlink(base: Base) -> Case:
    """`snapshots` a symlink to a folder the reader may write (root's): refused."""
    store, _ = _copy(base, "snapshots-symlink")
    victim, intact = _victim(base, "snapshots-symlink")
    shutil.rmtree(store / "snapshots")
    (store / "snapshots").symlink_to(victim)
    return Case(
        "snapshots-symlink", ["pin", "latest", "--store", str(store)], 1, "snapshots in store", intact
    )


def doc_symlink_dev_zero(base: Base) -> Case:
    """A snapshot document that is a symlink to /dev/zero (list grew without bound)."""
    store, _ = _copy(base, "dev-zero")
    (store / "snapshots" / f"{'e' * 64}.json").symlink_to("/dev/zero")
    return Case("doc-symlink-dev-zero", ["list", "--store", str(store), "--json"], 0, "is a symlink; refused")


def doc_fifo(base: Base) -> Case:
    """A snapshot document that is a FIFO (list hung on it)."""
    store, _ = _copy(base, "fifo")
    os.mkfifo(store / "snapshots" / f"{'f' * 64}.json")
    return Case("doc-fifo", ["list", "--store", str(store), "--json"], 0, "is a FIFO; refused")


def lock_symlink(base: Base) -> Case:
    """`lock` a symlink to a file the reader owns: pin run as its owner truncated it."""
    store, _ = _copy(base, "lock-symlink")
    victim, intact = _victim(base, "lock-symlink")
    (store / "lock").unlink(missing_ok=True)
    (store / "lock").symlink_to(victim / "precious.txt")
    return Case("lock-symlink", ["pin", base.ids[-1], "--store", str(store)], 1, "lock in store", intact)


def write_lock_symlink(base: Base) -> Case:
    store, db = _copy(base, "write-lock-symlink", db=True)
    assert db is not None
    victim, intact = _victim(base, "write-lock-symlink")
    (store / "write.lock").unlink(missing_ok=True)
    (store / "write.lock").symlink_to(victim / "precious.txt")
    args = ["restore", base.ids[0], "--yes", "--no-verify", "--db", str(db), "--store", str(store)]
    return Case("write-lock-symlink", args, 1, "write.lock in store", _both(intact, _db_intact(db)))


def foreign_owner(base: Base) -> Case:
    """A store owned by another user (uid 65534): refused, saying why (needs root to make)."""
    store, _ = _copy(base, "foreign")
    for p in [store, *store.rglob("*")]:
        os.lchown(p, 65534, 65534)
    return Case("foreign-owner", ["list", "--store", str(store)], 1, "owned by uid 65534")


# --- sizes, depths, decompression ----------------------------------------------------------


@functools.cache
def _bomb(declared: bool) -> bytes:
    """A zstd frame of BOMB zero bytes (made once: compressing takes a second)."""
    comp = zstandard.ZstdCompressor(level=1, write_content_size=declared)
    chunker = comp.compressobj(size=BOMB if declared else -1)
    zeros = bytes(16 << 20)
    return b"".join(chunker.compress(zeros) for _ in range(BOMB >> 24)) + chunker.flush()


def _bomb_case(base: Base, name: str, declared: bool) -> Case:
    store, _ = _copy(base, name)
    c = Crafter(store)
    body = _bomb(declared)
    key = c.raw_blob(blake3(bytes(16384)).hexdigest(), "data", body, 16384)
    lst = c.chunk_list(
        {"layout": "plain", "size": 16384, "extents": [{"offset": 0, "chunks": [[key, 16384]]}]}
    )
    sid = c.with_file(
        base.ids[-1], size=16384, data_bytes=16384, chunk_list=lst, layout="plain", hash_kind="content"
    )
    out = base.work / f"{name}-out"
    shutil.rmtree(out, ignore_errors=True)
    text = f"declares {BOMB} bytes" if declared else "does not match its hash"
    return Case(
        name,
        ["extract", sid, str(out), "--store", str(store)],
        1,
        text,
        lambda: "" if not out.exists() else f"{out} was made",
    )


def bomb_declared(base: Base) -> Case:
    """A small zstd frame declaring 1 GiB of content (python-zstandard allocates what a frame
    declares, whatever max_output_size says: 8 KB gave 256 MiB)."""
    return _bomb_case(base, "bomb-declared", True)


def bomb_undeclared(base: Base) -> Case:
    """A frame without a content size that inflates to 1 GiB: stopped one byte past 16 KiB."""
    return _bomb_case(base, "bomb-undeclared", False)


def _split_case(base: Base, name: str, record: int, link: int, text: str) -> Case:
    store, _ = _copy(base, name)
    c = Crafter(store)
    key = c.blob(bytes(16384))
    lst = c.chunk_list(
        {
            "layout": "hnsw-split",
            "size": record,
            "record_size": record,
            "link_bytes": link,
            "records": 1,
            "links": [[key, 16384]],
            "vectors": [[key, 16384]] * 4,
            "tail": [],
        }
    )
    sid = c.with_file(base.ids[-1], size=record, data_bytes=record, chunk_list=lst, layout="hnsw-split")
    out = base.work / f"{name}-out"
    shutil.rmtree(out, ignore_errors=True)
    return Case(name, ["extract", sid, str(out), "--store", str(store)], 1, text)


def hnsw_record_size(base: Base) -> Case:
    """An hnsw-split list with a 1 GiB record_size (buffered 4.4 GB)."""
    return _split_case(base, "hnsw-record-size", 1 << 30, 16384, "record_size")


def hnsw_link_bytes(base: Base) -> Case:
    """link_bytes larger than record_size (a ValueError from numpy)."""
    return _split_case(base, "hnsw-link-bytes", 16384, 65536, "link_bytes")


def _record_chunk_case(base: Base, name: str, body: bytes, text: str) -> Case:
    """A snapshot whose coll0 record index is one chunk of `body`: `find` skips it (saying
    why) and finds the record in the other snapshots."""
    store, _ = _copy(base, name)
    c = Crafter(store)
    key = c.blob(body, "records")
    index = {
        "version": 1,
        "watermark": 1,
        "collections": [
            {"id": "x", "name": "coll0", "records": 1, "chunks": [{"first": "a", "key": key, "count": 1}]}
        ],
        "versions": [],
    }
    doc = c.doc(base.ids[-1])
    doc["records"] = c.blob(json.dumps(index).encode(), "records")
    c.save(doc)
    return Case(name, ["find", "coll0-1", "--store", str(store)], 0, text)


def huge_record_chunk(base: Base) -> Case:
    """A 40 MB record chunk (find took 0.9 GB): over the 16 MiB a record blob may have."""
    return _record_chunk_case(base, "huge-record-chunk", _rows(2_000_000), "skipped")


@functools.cache
def _rows(n: int) -> bytes:
    """A record chunk of `n` records (made once)."""
    return b"[" + b",".join(b'["r%d",%d]' % (i, i) for i in range(n)) + b"]"


def deep_record_chunk(base: Base) -> Case:
    return _record_chunk_case(base, "deep-record-chunk", _deep(), "nested more than 32")


def deep_record_index(base: Base) -> Case:
    """The record index's directory blob nested 100,000 deep."""
    store, _ = _copy(base, "deep-record-index")
    c = Crafter(store)
    doc = c.doc(base.ids[-1])
    doc["records"] = c.blob(_deep(), "records")
    c.save(doc)
    return Case("deep-record-index", ["find", "coll0-1", "--store", str(store)], 0, "nested more than 32")


def deep_catalog(base: Base) -> Case:
    store, _ = _copy(base, "deep-catalog")
    (store / "catalog.json").write_bytes(b'{"version": 1, "snapshots": ' + _deep() + b"}")
    return Case("deep-catalog", ["list", "--store", str(store), "--json"], 0, "catalog.json is unreadable")


def huge_document(base: Base) -> Case:
    """A 500 MB snapshot document (list took 2.6 GB): refused from its size."""
    store, _ = _copy(base, "huge-doc")
    with open(store / "snapshots" / f"{'d' * 64}.json", "wb") as fh:
        fh.truncate(500 << 20)  # sparse: costs no disk
    return Case("huge-document", ["list", "--store", str(store), "--json"], 0, "more than the")


def _deep(n: int = 100_000) -> bytes:
    return b"[" * n + b"]" * n


def deep_snapshot(base: Base) -> Case:
    store, _ = _copy(base, "deep-doc")
    (store / "snapshots" / f"{'a' * 64}.json").write_bytes(_deep())
    return Case("deep-snapshot", ["list", "--store", str(store), "--json"], 0, "nested more than 32")


def deep_index(base: Base) -> Case:
    store, _ = _copy(base, "deep-index")
    Crafter(store).index(b'{"version": 1, "packs": ' + _deep() + b"}")
    args = ["verify", "--all", "--quick", "--store", str(store), "--json"]
    return Case("deep-index", args, 0, "nested more than 32")


def deep_config(base: Base) -> Case:
    store, _ = _copy(base, "deep-config")
    (store / "config.json").write_bytes(_deep())
    return Case("deep-config", ["list", "--store", str(store)], 1, "config.json: nested more than 32")


def deep_chunk_list(base: Base) -> Case:
    store, _ = _copy(base, "deep-list")
    c = Crafter(store)
    lst = c.blob(_deep(), "list")
    sid = c.with_file(base.ids[-1], chunk_list=lst)
    out = base.work / "deep-list-out"
    shutil.rmtree(out, ignore_errors=True)
    return Case(
        "deep-chunk-list", ["extract", sid, str(out), "--store", str(store)], 1, "nested more than 32"
    )


def bad_catalog(base: Base) -> Case:
    """Catalog entries that are not ids (they were echoed and blocked prune forever)."""
    store, _ = _copy(base, "catalog")
    path = store / "catalog.json"
    doc = json.loads(path.read_text())
    doc["snapshots"] += ["../../x", None, ESC + "[2J"]
    path.write_text(json.dumps(doc))

    def cleaned() -> str:
        left = json.loads(path.read_text())["snapshots"]
        return "" if all(isinstance(i, str) and len(i) == 64 for i in left) else f"catalog still holds {left}"

    return Case("bad-catalog", ["prune", "--keep-last", "1", "--store", str(store)], 0, "", cleaned, 0)


def misnamed_document(base: Base) -> Case:
    """A valid document under another id's name."""
    store, _ = _copy(base, "misnamed")
    shutil.copy(store / "snapshots" / f"{base.ids[0]}.json", store / "snapshots" / f"{'c' * 64}.json")
    return Case(
        "misnamed-document", ["list", "--store", str(store), "--json"], 0, "not the one its name says"
    )


def free_space(base: Base) -> Case:
    """A snapshot claiming a petabyte of data: refused before anything is written."""
    store, _ = _copy(base, "free-space")
    c = Crafter(store)
    doc = c.doc(base.ids[-1])
    doc["files"][0]["data_bytes"] = 1 << 50
    doc["files"][0]["size"] = 1 << 50
    sid = c.save(doc)
    out = base.work / "free-space-out"
    shutil.rmtree(out, ignore_errors=True)
    return Case("free-space", ["extract", sid, str(out), "--store", str(store)], 1, "not enough free space")


def data_over_manifest(base: Base) -> Case:
    """A chunk list holding more data than its file entry says (the free-space check's basis)."""
    store, _ = _copy(base, "data-over")
    c = Crafter(store)
    sid = c.with_file(base.ids[-1], data_bytes=1)
    out = base.work / "data-over-out"
    shutil.rmtree(out, ignore_errors=True)
    return Case("data-over-manifest", ["extract", sid, str(out), "--store", str(store)], 1, "holds more data")


def offset_past_pack(base: Base) -> Case:
    """An index row whose offset lies past its pack's end ("Invalid argument")."""
    store, _ = _copy(base, "offset")
    c = Crafter(store)
    data = b"x" * 16384
    body = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data)
    key = c.raw_blob(blake3(data).hexdigest(), "data", body, len(data), offset=1 << 40)
    lst = c.chunk_list(
        {"layout": "plain", "size": 16384, "extents": [{"offset": 0, "chunks": [[key, 16384]]}]}
    )
    sid = c.with_file(
        base.ids[-1], size=16384, data_bytes=16384, chunk_list=lst, layout="plain", hash_kind="content"
    )
    out = base.work / "offset-out"
    shutil.rmtree(out, ignore_errors=True)
    return Case(
        "offset-past-pack", ["extract", sid, str(out), "--store", str(store)], 1, "at offset 1099511627776"
    )


def file_too_large(base: Base) -> Case:
    """A sparse file of 2^59 bytes ("File too large", "Invalid argument")."""
    store, _ = _copy(base, "efbig")
    c = Crafter(store)
    data = b"y" * 16384
    key = c.blob(data)
    size = 1 << 59
    lst = c.chunk_list(
        {"layout": "plain", "size": size, "extents": [{"offset": size - 16384, "chunks": [[key, 16384]]}]}
    )
    sid = c.with_file(
        base.ids[-1], size=size, data_bytes=16384, chunk_list=lst, layout="plain", hash_kind="extents"
    )
    out = base.work / "efbig-out"
    shutil.rmtree(out, ignore_errors=True)
    name = c.doc(sid)["files"][0]["path"]
    return Case(
        "file-too-large", ["extract", sid, str(out), "--store", str(store)], 1, f"{name}: cannot be written"
    )


# --- terminal and markup -------------------------------------------------------------------

INJECTED = {
    "reason": "[/oops]" + ESC + "]8;;http://evil.example/" + "\x07click" + ESC + "]8;;\x07",
    "tags": [ESC + "[2J" + ESC + "[H", "[bold]x"],
    "note": ESC + "]0;owned\x07" + ESC + "[5mblink",
    "hostname": "host" + ESC + "[31m\u202e",
}


def injected_snapshot(base: Base, name: str) -> tuple[Path, str]:
    store, _ = _copy(base, name)
    c = Crafter(store)
    doc = c.doc(base.ids[-1])
    doc.update(INJECTED)
    doc["files"][0]["path"] = "seg" + ESC + "[5m.bin"
    return store, c.save(doc)


def markup_list(base: Base) -> Case:
    store, _ = injected_snapshot(base, "markup-list")
    return Case("markup-list", ["list", "--store", str(store)], 0, "", stderr_lines=0, out="[/oops]")


def markup_show(base: Base) -> Case:
    store, sid = injected_snapshot(base, "markup-show")
    return Case("markup-show", ["show", sid, "--store", str(store)], 0, "", stderr_lines=0)


def markup_error_line(base: Base) -> Case:
    """An invalid path holding escape sequences, echoed in the one-line error."""
    store, _ = _copy(base, "markup-error")
    c = Crafter(store)
    sid = c.with_file(base.ids[-1], path="../" + ESC + "]0;owned\x07")
    return Case("markup-error-line", ["show", sid, "--store", str(store)], 1, "\\x1b]0;owned\\x07")


def markup_record_ids(base: Base) -> Case:
    """Record ids with escape sequences, listed by diff --ids."""
    store, _ = _copy(base, "markup-ids")
    c = Crafter(store)
    ids = sorted([ESC + "]0;owned\x07", ESC + "[2J" + "x", "[/oops]"])
    chunk = c.blob(json.dumps([[i, 1] for i in ids]).encode(), "records")
    index = {
        "version": 1,
        "watermark": 1,
        "collections": [
            {
                "id": "x",
                "name": "evil" + ESC + "[5m",
                "records": 3,
                "chunks": [{"first": ids[0], "key": chunk, "count": 3}],
            }
        ],
        "versions": [],
    }
    doc = c.doc(base.ids[-1])
    doc["records"] = c.blob(json.dumps(index).encode(), "records")
    sid = c.save(doc)
    return Case(
        "markup-record-ids",
        ["diff", base.ids[-1], sid, "--ids", "--store", str(store)],
        0,
        "",
        stderr_lines=0,
    )


# --- SQLite inside a snapshot -----------------------------------------------------------


def sqlite_snapshot(base: Base, name: str, change: Callable[[sqlite3.Connection], None]) -> tuple[Path, str]:
    """A real snapshot (chromasnap's own capture: no chromadb needed) of a copy of the
    database whose chroma.sqlite3 `change` crafted."""
    store, db = _copy(base, name, db=True)
    assert db is not None
    con = sqlite3.connect(db / "chroma.sqlite3")
    change(con)
    con.commit()
    con.close()
    from chromasnap.snapshots import SnapshotManager

    return store, SnapshotManager(db, store).snapshot(reason=name).id


def _recursive_view(con: sqlite3.Connection) -> None:
    con.execute("ALTER TABLE collections RENAME TO collections_real")
    con.execute(
        "CREATE VIEW collections AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        "SELECT c.id, c.name FROM collections_real c, n"
    )


def recursive_view_peek(base: Base) -> Case:
    store, sid = sqlite_snapshot(base, "view-peek", _recursive_view)
    return Case(
        "recursive-view-peek", ["peek", sid, "coll0", "--store", str(store)], 1, "collections is a view"
    )


def recursive_view_diff(base: Base) -> Case:
    """The view leaves the snapshot without a record index, so diff reads its chroma.sqlite3:
    it called both collections dropped."""
    store, sid = sqlite_snapshot(base, "view-diff", _recursive_view)
    return Case(
        "recursive-view-diff", ["diff", base.ids[-1], sid, "--store", str(store)], 1, "collections is a view"
    )


def _huge_metadata(con: sqlite3.Connection) -> None:
    (rowid,) = con.execute("SELECT min(id) FROM embeddings").fetchone()
    con.execute(
        "UPDATE embedding_metadata SET string_value = ? WHERE id = ? AND key = 'topic'",
        ("m" * (20 << 20), rowid),
    )


def huge_metadata_peek(base: Base) -> Case:
    """A 20 MB metadata value (peek ran over 120 s): shown clipped."""
    store, sid = sqlite_snapshot(base, "huge-meta", _huge_metadata)
    args = ["peek", sid, "coll0", "--limit", "2", "--store", str(store)]
    return Case("huge-metadata-peek", args, 0, "", stderr_lines=0, out="characters")


CLI_CASES: list[Callable[[Base], Case]] = [
    journal_in_snapshot,
    journal_beside_db,
    journal_entries_in_db,
    setuid_modes,
    mode_out_of_range,
    packs_symlink_prune,
    packs_symlink_snapshot,
    snapshots_symlink,
    doc_symlink_dev_zero,
    doc_fifo,
    lock_symlink,
    write_lock_symlink,
    foreign_owner,
    bomb_declared,
    bomb_undeclared,
    hnsw_record_size,
    hnsw_link_bytes,
    huge_record_chunk,
    deep_record_chunk,
    deep_record_index,
    huge_document,
    deep_snapshot,
    deep_index,
    deep_config,
    deep_chunk_list,
    deep_catalog,
    bad_catalog,
    misnamed_document,
    free_space,
    data_over_manifest,
    offset_past_pack,
    file_too_large,
    markup_list,
    markup_show,
    markup_error_line,
    markup_record_ids,
    recursive_view_peek,
    recursive_view_diff,
    huge_metadata_peek,
]
"""Every crafted store checked through the CLI, in one place for the test and the torture."""


def outcome_problems(case: Case, code: int, stdout: str, stderr: str) -> list[str]:
    """What is wrong with how the CLI handled `case` (empty when it did it right): the exit
    code, one line on stderr holding the text (or none), no traceback, no raw control
    character anywhere, and nothing touched that `case.check` watches."""
    out = []
    lines = stderr.strip().splitlines()
    if code != case.code:
        out.append(f"exit {code}, not {case.code}: {stderr.strip()[:300]}")
    if "Traceback" in stderr:
        out.append("a traceback")
    if len(lines) != case.stderr_lines or (case.text and case.text not in stderr):
        out.append(f"stderr is not one line holding {case.text!r}: {stderr.strip()[:300]!r}")
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        raw = [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"]
        if raw:
            out.append(f"{name} holds raw control characters {sorted(set(raw))!r}")
    if case.out not in stdout:
        out.append(f"stdout does not hold {case.out!r}")
    problem = case.check()
    if problem:
        out.append(problem)
    return out
