"""The encryption primitives against the work a plain snapshot already does (issue 17).

    python bench/crypto_bench.py [--rounds 7]

Prints single-thread MB/s (median of the rounds) of:
- AES-256-GCM and ChaCha20-Poly1305 (`cryptography`), encrypt and decrypt, on 256 KiB and
  16 MiB bodies: the choice of SealedCodec's cipher;
- per blob, on 256 KiB float32 vector chunks (as `sample.py` writes, the vector stream's
  chunk size) and on 16 KiB text chunks (as chroma.sqlite3's): BLAKE3, keyed BLAKE3, zstd
  level 1 compress and decompress, SealedCodec.seal and .open; then the write path of a plain
  store (hash + compress) against a sealed one (keyed hash + compress + seal), and the read
  paths, as ratios;
- whether `cryptography` releases the GIL during a seal (so BlobWriter's threads overlap);
- a write pipeline shaped like BlobWriter's (threads: key, zstd-1, seal, append, fsync) on
  128 MiB of vector chunks, plain against sealed, interleaved;
- the default key-derivation functions (Argon2id, scrypt).
No chromadb and no bench database needed: the data is generated the way sample.py does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chromasnap.snapshots import crypto, keys

KIB = 1024
MIB = 1024 * 1024


def rate(fn: Callable[[], object], nbytes: int, rounds: int, budget: float = 0.25) -> float:
    """Median MB per CPU second of this thread (time.thread_time: time other processes take
    from us on a shared machine does not count) over `rounds` rounds of about `budget` s each."""
    t = time.thread_time()
    fn()
    once = max(time.thread_time() - t, 1e-6)
    reps = max(1, int(budget / once))
    vals = []
    for _ in range(rounds):
        t = time.thread_time()
        for _ in range(reps):
            fn()
        vals.append(reps * nbytes / max(time.thread_time() - t, 1e-9) / 1e6)
    return statistics.median(vals)


def seconds(fn: Callable[[], object], rounds: int) -> float:
    vals = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        vals.append(time.perf_counter() - t)
    return statistics.median(vals)


def vector_chunk(size: int = 256 * KIB) -> bytes:
    rng = np.random.default_rng(7)
    return rng.standard_normal(size // 4, dtype=np.float32).tobytes()


def text_chunk(size: int = 16 * KIB) -> bytes:
    rng = np.random.default_rng(8)
    words = [f"word{i}" for i in range(2000)]
    out = " ".join(words[i] for i in rng.integers(0, len(words), size // 4)).encode()
    return out[:size]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    r = args.rounds
    key = os.urandom(32)
    nonce = os.urandom(12)
    print(
        f"cpu: {os.cpu_count()} cores; rounds: {r}; MB = 10^6 bytes; MB/s = per CPU second of one thread unless said"
    )

    print("\n== AEAD choice (random bodies) ==")
    print(f"{'cipher':<20} {'body':>7} {'encrypt MB/s':>13} {'decrypt MB/s':>13}")
    for size, label in ((256 * KIB, "256KiB"), (16 * MIB, "16MiB")):
        body = os.urandom(size)
        for name, cls in (("AES-256-GCM", AESGCM), ("ChaCha20-Poly1305", ChaCha20Poly1305)):
            box = cls(key)
            sealed = box.encrypt(nonce, body, b"packs/ab/name")
            enc = rate(lambda box=box, body=body: box.encrypt(nonce, body, b"packs/ab/name"), size, r)
            dec = rate(lambda box=box, sealed=sealed: box.decrypt(nonce, sealed, b"packs/ab/name"), size, r)
            print(f"{name:<20} {label:>7} {enc:>13,.0f} {dec:>13,.0f}")

    codec = crypto.SealedCodec(crypto.new_master_key())
    plain = crypto.PlainCodec()
    comp = zstandard.ZstdCompressor(level=1, write_content_size=True)
    dctx = zstandard.ZstdDecompressor()
    for label, chunk in (
        ("256 KiB float32 vector chunk", vector_chunk()),
        ("16 KiB text chunk", text_chunk()),
    ):
        n = len(chunk)
        z = comp.compress(chunk)
        sealed = codec.seal("k" * 64, z)
        print(
            f"\n== per blob: {label} (zstd-1 ratio {len(z) / n:.3f}; sealed +{len(sealed) - len(z)} bytes) =="
        )
        ops: dict[str, Callable[[], object]] = {
            "blake3": lambda c=chunk: plain.blob_key(c),
            "blake3 keyed": lambda c=chunk: codec.blob_key(c),
            "zstd-1 compress": lambda c=chunk: comp.compress(c),
            "zstd decompress": lambda z=z: dctx.decompress(z),
            "seal (compressed)": lambda z=z: codec.seal("k" * 64, z),
            "open (compressed)": lambda s=sealed: codec.open("k" * 64, s),
        }
        # Interleaved: each round times every operation back to back, so a burst of load on
        # the shared machine lands on all of them; ratios are taken within a round.
        per_round = [{k: rate(f, n, 1, budget=0.1) for k, f in ops.items()} for _ in range(r)]
        for k in ops:
            print(f"  {k:<22} {statistics.median(x[k] for x in per_round):>9,.0f} MB/s of plaintext")

        def ratio(
            num: tuple[str, ...], den: tuple[str, ...], rounds: list[dict[str, float]] = per_round
        ) -> float:
            return statistics.median(sum(1 / x[k] for k in num) / sum(1 / x[k] for k in den) for x in rounds)

        w_plain = ("blake3", "zstd-1 compress")
        w_sealed = ("blake3 keyed", "zstd-1 compress", "seal (compressed)")
        r_plain = ("zstd decompress", "blake3")
        r_sealed = ("open (compressed)", "zstd decompress", "blake3 keyed")
        print(f"  write path CPU sealed/plain (hash+compress[+seal]):  {ratio(w_sealed, w_plain):.3f}")
        print(f"  read path CPU sealed/plain ([open+]decompress+hash): {ratio(r_sealed, r_plain):.3f}")
        print(
            f"  seal time / zstd-1 compress time:                    {ratio(('seal (compressed)',), ('zstd-1 compress',)):.3f}"
        )
        print(
            f"  open time / zstd decompress time:                    {ratio(('open (compressed)',), ('zstd decompress',)):.3f}"
        )

    print("\n== seal and the GIL ==")
    big = os.urandom(64 * MIB)
    stamps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    th = threading.Thread(target=ticker)
    th.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    codec.seal("k" * 64, big)
    t1 = time.perf_counter()
    stop.set()
    th.join()
    inside = [x for x in stamps if t0 <= x <= t1]
    span = (inside[-1] - inside[0]) if len(inside) > 1 else 0.0
    print(
        f"  a Python thread ran during {span / (t1 - t0):.0%} of one 64 MiB seal ({(t1 - t0) * 1e3:.0f} ms)"
    )

    print("\n== write pipeline: 128 MiB of 256 KiB vector chunks, BlobWriter's shape ==")
    # key + zstd-1 (+ seal) on a pool of cores+1 threads, bodies appended to a scratch file,
    # fsync at the end; plain and sealed interleaved, median wall of the rounds.
    rng = np.random.default_rng(11)
    data = [rng.standard_normal(64 * KIB, dtype=np.float32).tobytes() for _ in range(512)]
    workers = (os.cpu_count() or 1) + 1
    local = threading.local()

    def pipeline(c: crypto.Codec, path: Path) -> tuple[float, float]:
        lock = threading.Lock()
        with open(path, "wb") as fh:

            def one(chunk: bytes) -> None:
                z = getattr(local, "z", None)
                if z is None:
                    z = local.z = zstandard.ZstdCompressor(level=1, write_content_size=True)
                k = c.blob_key(chunk)
                body = c.seal(k, z.compress(chunk))
                with lock:
                    fh.write(body)

            t, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, data))
            fh.flush()
            os.fsync(fh.fileno())
            return time.perf_counter() - t, time.process_time() - cpu

    scratch = Path(tempfile.mkdtemp(prefix="crypto-bench-"))
    try:
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "sealed": []}
        for _ in range(r):
            runs["plain"].append(pipeline(plain, scratch / "p"))
            runs["sealed"].append(pipeline(codec, scratch / "s"))
        for i, what in ((0, "wall"), (1, "CPU (all threads)")):
            p = [x[i] for x in runs["plain"]]
            q = [x[i] for x in runs["sealed"]]
            ratios = [b / a for a, b in zip(p, q, strict=True)]
            print(
                f"  {what:<18} plain {statistics.median(p) * 1e3:5.0f} ms, sealed {statistics.median(q) * 1e3:5.0f} ms; "
                f"sealed/plain, median of pairs {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
        print(
            f"  ({workers} threads; plain wall = {128 * MIB / statistics.median(x[0] for x in runs['plain']) / 1e6:.0f} MB/s)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("\n== key derivation (32-byte output, median of 3) ==")
    salt = os.urandom(16)
    for kdf in (keys.DEFAULT_KDF, keys.Scrypt(), keys.FAST_KDF):
        print(f"  {kdf!r:<60} {seconds(lambda kdf=kdf: kdf.derive(b'correct horse', salt), 3):.3f} s")


if __name__ == "__main__":
    main()
