"""Shared fixtures: real Chroma databases built by a child process with explicit embeddings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import zstandard
from blake3 import blake3

from chromasnap.manifest import Snapshot
from chromasnap.snapshots import SnapshotManager, sample

SAMPLE = sample.__file__
CACHE = Path(os.environ.get("CHROMASNAP_TEST_CACHE", Path.home() / ".cache" / "chromasnap-tests"))
OLD_CHROMADB = "1.0.20"


def run_sample(*args: str, python: str = sys.executable, timeout: float = 600) -> str:
    """Run the standalone sample builder in a child process; returns its stdout."""
    proc = subprocess.run(
        [python, SAMPLE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"sample.py {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def counts(db: Path, python: str = sys.executable) -> dict[str, int]:
    """Open `db` with chromadb in a child process and count each collection."""
    out: dict[str, int] = json.loads(run_sample("count", str(db), python=python))
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def flip_ignored_bit(mgr: SnapshotManager, snap: Snapshot) -> tuple[str, str]:
    """Flip, in place, a bit of a stored vector chunk that zstd's decoder ignores (the blob
    still decodes to its hash); returns (blob key, pack id). Skips the test if none exists."""
    level0 = next(f for f in snap.files if f.layout == "hnsw-split" and f.size > 1 << 20)
    key = mgr.repo.read_chunk_list(level0.chunk_list).list.vectors[0][0]  # type: ignore[union-attr]
    loc = mgr.repo.index()[key]
    pack = mgr.store_path / "packs" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    body = bytes(data[loc.offset : loc.offset + loc.length])
    dctx = zstandard.ZstdDecompressor()
    for i in range(len(body)):
        flipped = bytearray(body)
        flipped[i] ^= 0x01
        try:
            raw = dctx.decompress(bytes(flipped), max_output_size=loc.raw_length)
        except zstandard.ZstdError:
            continue
        if blake3(raw).hexdigest() == key:
            data[loc.offset + i] ^= 0x01
            pack.write_bytes(bytes(data))
            return key, loc.pack
    pytest.skip("this chunk's zstd frame has no bit its decoder ignores")


@pytest.fixture(scope="session")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two collections: one whose HNSW has persisted (2500), one that has not (300)."""
    path = tmp_path_factory.mktemp("base") / "chroma"
    run_sample("build", str(path), "--records", "2500", "300")
    return path


@pytest.fixture
def db(base_db: Path, tmp_path: Path) -> Path:
    """A private copy of the base database for one test (mtimes kept)."""
    dest = tmp_path / "chroma"
    shutil.copytree(base_db, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def old_python() -> str:
    """A virtual environment with chromadb 1.0.20, created once and cached across runs."""
    env = CACHE / f"chromadb-{OLD_CHROMADB}"
    python = env / "bin" / "python"
    marker = env / ".ready"
    if not marker.exists():
        shutil.rmtree(env, ignore_errors=True)
        env.parent.mkdir(parents=True, exist_ok=True)
        venv.create(env, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"chromadb=={OLD_CHROMADB}"],
            check=True,
            timeout=900,
        )
        marker.write_text("ok")
    return str(python)
