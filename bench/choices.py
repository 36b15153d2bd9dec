"""The measurements behind the store's defaults (docs/format.md, "Choices").

    python bench/choices.py

On the cached bench database and a copy grown by 5%: hash speed (BLAKE3 vs SHA-256),
zstd level per stream, and how much of the grown chroma.sqlite3 and HNSW link stream
each chunking (fixed 4/16/64 KiB, content-defined ~16 KiB) finds unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zstandard
from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, fresh_copy

from chromasnap.snapshots import hnsw, sample


def fixed(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


_GEAR = np.random.default_rng(42).integers(0, 2**63, 256, dtype=np.uint64)


def cdc(data: bytes, avg: int = 16384, lo: int = 4096, hi: int = 65536) -> Iterator[bytes]:
    """Gear-hash content-defined chunking (FastCDC's rolling hash), vectorized with numpy."""
    arr = np.frombuffer(data, dtype=np.uint8)
    mask = np.uint64((avg - 1) << (64 - avg.bit_length() + 1))  # top bits, as FastCDC
    cuts: list[int] = []
    block = 8 << 20
    for start in range(0, len(arr), block):
        s = max(0, start - 64)
        g = _GEAR[arr[s : start + block]]
        h = np.zeros(len(g), dtype=np.uint64)
        for k in range(64):  # h_i = sum_k gear[b_{i-k}] << k  (mod 2^64)
            h[k:] += g[: len(g) - k] << np.uint64(k)
        idx = np.nonzero((h & mask) == 0)[0] + s
        cuts.extend(int(i) + 1 for i in idx if i >= start)
    last = 0
    for c in cuts:
        if c - last < lo:
            continue
        while c - last > hi:
            yield data[last : last + hi]
            last += hi
        yield data[last:c]
        last = c
    while last < len(data):
        yield data[last : last + hi]
        last += hi


def new_fraction(a: bytes, b: bytes, chunker: Callable[[bytes], Iterator[bytes]]) -> tuple[float, int]:
    seen = {blake3(c).digest() for c in chunker(a)}
    chunks = list(chunker(b))
    new = sum(len(c) for c in chunks if blake3(c).digest() not in seen)
    return new / len(b), len(chunks)


def main() -> int:
    a_db = bench_db()
    b_db = CACHE / "choices" / "chroma"
    if not (b_db.parent / ".ready").exists():
        fresh_copy(a_db, b_db)
        subprocess.run([sys.executable, sample.__file__, "grow", str(b_db), "--fraction", "0.05"], check=True)
        (b_db.parent / ".ready").write_text("ok")

    data = os.urandom(64 << 20)
    print("hash speed (MB/s, single thread)")
    for name, fn in (
        ("sha256", lambda x: hashlib.sha256(x).digest()),
        ("blake3", lambda x: blake3(x).digest()),
    ):
        for cs in (16 << 10, 1 << 20):
            t = time.perf_counter()
            for c in fixed(data, cs):
                fn(c)
            print(f"  {name:7} {cs >> 10:5} KiB chunks {len(data) / (time.perf_counter() - t) / 1e6:7.0f}")

    seg = max(
        (p for p in a_db.iterdir() if p.is_dir()),
        key=lambda p: (p / "data_level0.bin").stat().st_size,
    )
    header = hnsw.parse_header((seg / "header.bin").read_bytes())
    assert header is not None
    rec, link = header.size_data_per_element, header.offset_data
    a0 = (seg / "data_level0.bin").read_bytes()
    b0 = (b_db / seg.name / "data_level0.bin").read_bytes()
    la, va = hnsw.split_records(a0[: len(a0) // rec * rec], rec, link)
    lb, vb = hnsw.split_records(b0[: len(b0) // rec * rec], rec, link)
    sqa = (a_db / "chroma.sqlite3").read_bytes()
    sqb = (b_db / "chroma.sqlite3").read_bytes()

    print("zstd per chunk: compressed/raw and MB/s")
    for name, stream, cs in (
        ("vectors", va, 256 << 10),
        ("links", la, 64 << 10),
        ("sqlite", sqa, 16 << 10),
    ):
        for level in (1, 3, 6):
            c = zstandard.ZstdCompressor(level=level)
            t = time.perf_counter()
            out = sum(len(c.compress(x)) for x in fixed(stream, cs))
            dt = time.perf_counter() - t
            print(f"  {name:8} level {level}: {out / len(stream):.3f}  {len(stream) / dt / 1e6:6.0f} MB/s")

    print("after +5% vectors: fraction of the new file not found in the old one (chunks)")
    schemes: list[tuple[str, Callable[[bytes], Iterator[bytes]]]] = [
        ("fixed 4 KiB", lambda d: fixed(d, 4096)),
        ("fixed 16 KiB", lambda d: fixed(d, 16384)),
        ("fixed 64 KiB", lambda d: fixed(d, 65536)),
        ("CDC ~16 KiB", cdc),
    ]
    for name, (a, b) in (
        ("chroma.sqlite3", (sqa, sqb)),
        ("hnsw links", (la, lb)),
        ("whole level0", (a0, b0)),
    ):
        for sname, fn in schemes:
            if name == "whole level0" and sname.startswith("CDC"):
                continue
            frac, n = new_fraction(a, b, fn)
            print(f"  {name:15} {sname:13} new {frac:.3f} of {len(b) / 1e6:6.1f} MB ({n} chunks)")
    frac, n = new_fraction(va, vb, lambda d: fixed(d, 256 << 10))
    print(
        f"  {'hnsw vectors':15} {'fixed 256 KiB':13} new {frac:.3f} of {len(vb) / 1e6:6.1f} MB ({n} chunks)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
