"""The `chromasnap` command, run as a real subprocess: JSON output, exit codes, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tree_bytes

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=cwd,
        timeout=300,
        check=False,
    )


def store_state(store: Path) -> dict[str, bytes]:
    if not store.exists():
        return {}
    return {k: v for k, v in tree_bytes(store).items() if not k.startswith(("lock", "tmp/"))}


def test_snapshot_list_show_extract_json(db: Path, tmp_path: Path) -> None:
    r = cli("snapshot", "--db", str(db), "--tag", "nightly", "--tag", "v1", "--note", "first", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert len(snap["id"]) == 64 and snap["tags"] == ["nightly", "v1"] and snap["note"] == "first"
    r = cli("snapshot", "--db", str(db), "--json")
    assert r.returncode == 0
    r = cli("list", "--db", str(db), "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert rows[0]["id"] == snap["id"] and len(rows) == 2
    for row in rows:
        assert {"id", "created_at", "reason", "tags", "logical_bytes", "new_bytes"} <= set(row)
        assert row["logical_bytes"] == sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
    assert rows[0]["new_bytes"] > 0
    r = cli("show", snap["id"][:8], "--db", str(db), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == snap["id"]
    r = cli("show", "latest", "--db", str(db))
    assert r.returncode == 0 and rows[-1]["id"] in r.stdout and "coll0" in r.stdout
    out = tmp_path / "copy"
    r = cli("extract", snap["id"][:10], str(out), "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(out)
    assert tree_bytes(out) == tree_bytes(db)


def test_env_vars_and_default_store_location(db: Path, tmp_path: Path) -> None:
    r = cli("snapshot", env={"CHROMASNAP_DB": str(db)})
    assert r.returncode == 0, r.stderr
    assert "taken" in r.stdout
    assert (db.parent / "chroma.snapshots" / "config.json").is_file()
    store = tmp_path / "elsewhere"
    r = cli("snapshot", env={"CHROMASNAP_DB": str(db), "CHROMASNAP_STORE": str(store)})
    assert r.returncode == 0 and (store / "config.json").is_file()
    r = cli("list", "--store", str(store), "--json")  # the store alone is enough to read
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 1


def test_unchanged_snapshot_says_nothing_changed(db: Path) -> None:
    assert cli("snapshot", "--db", str(db)).returncode == 0
    import time

    time.sleep(2.1)
    cli("snapshot", "--db", str(db))
    r = cli("snapshot", "--db", str(db))
    assert r.returncode == 0 and "nothing changed" in r.stdout and "0 bytes new" in r.stdout


def test_schema_prints_json_schema() -> None:
    r = cli("schema")
    assert r.returncode == 0
    assert "snapshot" in json.loads(r.stdout)


def test_list_does_not_import_chromadb(db: Path) -> None:
    """Nor numpy, nor (a plain store) argon2 and cryptography: start-up is most of a command's
    time on a busy machine (issue 20's profile: imports held the GIL for half a snapshot)."""
    assert cli("snapshot", "--db", str(db)).returncode == 0
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['chromasnap', 'list', '--db', {str(db)!r}]\n"
        "try:\n    runpy.run_module('chromasnap.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('chromadb', 'numpy', 'onnxruntime') if m in sys.modules))\n"
        # nor, for a plain local store, what only remote or encrypted stores need (issue 16)
        "print(sorted(m for m in ('boto3', 'botocore', 'argon2', 'cryptography',\n"
        "    'chromasnap.snapshots.keys', 'chromasnap.snapshots.lease') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-2] == "[]"
    assert r.stdout.strip().splitlines()[-1] == "[]"


def _bad_inputs(db: Path, tmp: Path) -> list[tuple[list[str], int, str]]:
    plain = tmp / "plain-dir"
    plain.mkdir()
    afile = tmp / "a-file"
    afile.write_text("x")
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("x")
    store = db.parent / "chroma.snapshots"
    nested = store / "db"
    sid = "deadbeef"
    return [
        (["snapshot"], 2, "no database given"),
        (["snapshot", "--db", str(tmp / "missing")], 2, "does not exist"),
        (["snapshot", "--db", str(afile)], 2, "not a directory"),
        (["snapshot", "--db", str(plain)], 2, "not a Chroma database"),
        (["snapshot", "--db", str(db), "--store", str(db / "snaps")], 2, "inside the database"),
        (["snapshot", "--db", str(db), "--store", str(db)], 2, "inside the database"),
        (["snapshot", "--db", str(nested), "--store", str(store)], 2, "inside the store"),
        (["snapshot", "--db", str(db), "--store", str(afile)], 2, "not a directory"),
        (["snapshot", "--db", str(db), "--tag", "has space"], 2, "invalid tag"),
        (["snapshot", "--db", str(db), "--tag", ""], 2, "invalid tag"),
        (["show", sid, "--db", str(db)], 2, "no snapshot matches"),
        (["show", "zz", "--db", str(db)], 2, "not a snapshot id"),
        (["show", "abcd", "--db", str(db)], 2, "matches 2 snapshots"),
        (["extract", "latest", str(full), "--db", str(db)], 2, "not empty"),
        (["extract", "latest", str(afile), "--db", str(db)], 2, "not a directory"),
        (["extract", "latest", str(store / "out"), "--db", str(db)], 2, "inside the store"),
        (["extract", "latest", str(tmp / "no" / "parent"), "--db", str(db)], 2, "does not exist"),
        (["list", "--db", str(tmp / "other")], 2, "no chromasnap store"),
        (["list", "--store", str(tmp / "nowhere")], 2, "no chromasnap store"),
        (["show", "latest", "--store", str(tmp / "nowhere")], 2, "no chromasnap store"),
        (["list", "--db", str(db), "--store", str(afile)], 2, "not a directory"),
    ]


def test_bad_inputs_fail_with_one_line_and_leave_the_store_alone(db: Path, tmp_path: Path) -> None:
    assert cli("snapshot", "--db", str(db)).returncode == 0
    store = db.parent / "chroma.snapshots"
    for fake in ("abcd" + "0" * 60, "abcd" + "1" * 60):  # two ids sharing a prefix
        shutil.copy(next(store.glob("snapshots/*.json")), store / "snapshots" / f"{fake}.json")
    before_store, before_db = store_state(store), tree_bytes(db)
    for args, code, text in _bad_inputs(db, tmp_path):
        r = cli(*args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, r.stderr)
    assert store_state(store) == before_store
    assert tree_bytes(db) == before_db


def test_damaged_manifest_is_one_line_and_hides_no_other_snapshot(db: Path) -> None:
    assert cli("snapshot", "--db", str(db), "--tag", "good").returncode == 0
    assert cli("snapshot", "--db", str(db), "--tag", "bad").returncode == 0
    store = db.parent / "chroma.snapshots"
    rows = json.loads(cli("list", "--db", str(db), "--json").stdout)
    bad = store / "snapshots" / f"{rows[1]['id']}.json"
    bad.write_bytes(bad.read_bytes()[:-40])
    r = cli("list", "--db", str(db), "--json")
    assert r.returncode == 0
    assert [row["tags"] for row in json.loads(r.stdout)] == [["good"]]
    assert "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    r = cli("show", rows[1]["id"], "--db", str(db))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_newer_store_format_is_refused(db: Path) -> None:
    assert cli("snapshot", "--db", str(db)).returncode == 0
    cfg = db.parent / "chroma.snapshots" / "config.json"
    data = json.loads(cfg.read_text())
    data["version"] = 99
    cfg.write_text(json.dumps(data))
    before = store_state(cfg.parent)
    for args in (["snapshot"], ["list"], ["show", "latest"]):
        r = cli(*args, "--db", str(db))
        assert r.returncode == 1 and "newer chromasnap" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert store_state(cfg.parent) == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = cli("snapshot", "--db", str(tmp_path / "missing"), "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_usage_errors_exit_2_without_traceback() -> None:
    r = cli("snapshot", "--no-such-option")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_console_script_and_demo(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "chromasnap"  # this interpreter's own script
    exe = str(beside) if beside.exists() else shutil.which("chromasnap") or "chromasnap"
    r = subprocess.run(
        [exe, "demo", "--dir", str(tmp_path / "demo"), "--records", "1500", "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["health"] in ("crashed", "exception", "mismatch")  # the crash broke it
    assert out["recover"]["action"] == "restored" and out["restored_ok"]
    assert out["counts"] == {"coll0": 1650, "coll1": 165}
    assert [s["reason"] for s in out["snapshots"]] == ["manual", "pre-write", "pre-write"]


def test_read_only_store_lists_but_refuses_a_snapshot(db: Path, tmp_path: Path) -> None:
    """A real read-only bind mount of the store (skipped where mounting is not allowed)."""
    assert cli("snapshot", "--db", str(db)).returncode == 0
    store = db.parent / "chroma.snapshots"
    ro = tmp_path / "ro-store"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        before = store_state(store)
        r = cli("list", "--db", str(db), "--store", str(ro), "--json")
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 1
        r = cli("snapshot", "--db", str(db), "--store", str(ro))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Read-only" in r.stderr, r.stderr
        assert store_state(store) == before
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_files_are_named_by_collection_at_80_columns_and_piped(db: Path, tmp_path: Path) -> None:
    """Two collections' HNSW files differed only in segment ids that a narrow table cut off, so
    `show` printed rows that looked the same; they are `coll/data_level0.bin` now, folded never
    cut, with the segment id in `--json` and in its own column on a wide terminal."""
    assert cli("snapshot", "--db", str(db)).returncode == 0
    narrow = cli("show", "latest", "--db", str(db), env={"COLUMNS": "80"}).stdout
    rows = [ln for ln in narrow.splitlines() if "data_level0.bin" in ln]
    assert len(rows) == 2 and len(set(rows)) == 2 and "…" not in narrow
    assert all(len(ln) <= 80 for ln in narrow.splitlines())
    assert {r.split()[1] for r in rows} == {"coll0/data_level0.bin", "coll1/data_level0.bin"}
    wide = cli("show", "latest", "--db", str(db), env={"COLUMNS": "160"}).stdout
    data = json.loads(cli("show", "latest", "--db", str(db), "--json").stdout)
    segs = {f["path"].split("/")[0] for f in data["files"] if f["path"].endswith("data_level0.bin")}
    assert {f["label"] for f in data["files"]} >= {"coll0/header.bin", "coll1/header.bin", "chroma.sqlite3"}
    assert len(segs) == 2 and all(s in wide for s in segs) and not any(s in narrow for s in segs)
    # a change to one collection's index: diff names the collection's files
    seg = next(iter(segs))
    with (db / seg / "length.bin").open("r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))  # a byte that really differs
    diff = cli("diff", "latest", "--db", str(db)).stdout
    name = next(f["label"] for f in data["files"] if f["path"] == f"{seg}/length.bin")
    assert f"changed  {name}" in diff and seg not in diff


def test_list_folds_long_tags_instead_of_cutting_them(db: Path) -> None:
    """Two snapshots whose tags differ only at the end looked the same at 80 columns (`a-very-…`):
    the tags column folds now, so every character is printed."""
    for end in ("one", "two"):
        tag = f"nightly-run-of-the-indexer-number-{end}"
        assert cli("snapshot", "--db", str(db), "--tag", tag).returncode == 0
    out = cli("list", "--db", str(db), env={"COLUMNS": "80"}).stdout
    assert "…" not in out and all(len(ln) <= 80 for ln in out.splitlines())
    flat = "".join(ln.split("│")[4].strip() for ln in out.splitlines() if ln.count("│") == 8)
    assert "nightly-run-of-the-indexer-number-one" in flat and "nightly-run-of-the-indexer-number-two" in flat
