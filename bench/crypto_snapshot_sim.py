"""A stand-in for an encrypted snapshot until the repository takes a Codec (issue 17).

    python bench/crypto_snapshot_sim.py plain|sealed chromasnap-args...

Runs the `chromasnap` CLI in this process; with `sealed`, every blob is named by the keyed
BLAKE3 of SealedCodec and every blob body is sealed (AES-256-GCM, the blob key as associated
data) before it enters its pack: the work an encrypted snapshot adds on its hot path. Pack
trailers, index files and the snapshot document stay plain (a few KB per snapshot). Time it
against `plain` with farm-bench, for example:

    farm-bench --vs 'sh snap.sh plain' -- sh snap.sh sealed

Bench-only patching of two seams (`repository.blake3`, `pack.PackFile.add`); delete this
script when `snapshot_bench.py` can create encrypted stores.
"""

from __future__ import annotations

import sys
from typing import Any

from chromasnap.snapshots import crypto, pack, repository


class _KeyedHash:
    def __init__(self, codec: crypto.SealedCodec, data: bytes) -> None:
        self._key = codec.blob_key(data)

    def hexdigest(self) -> str:
        return self._key


def seal_blobs() -> None:
    codec = crypto.SealedCodec(crypto.new_master_key())
    repository.blake3 = lambda data=b"": _KeyedHash(codec, data)  # type: ignore[assignment,misc]
    add = pack.PackFile.add

    def sealed_add(self: pack.PackFile, key: str, blob_type: str, body: bytes, raw_length: int) -> Any:
        return add(self, key, blob_type, codec.seal(key, body), raw_length)

    pack.PackFile.add = sealed_add  # type: ignore[method-assign]


if __name__ == "__main__":
    mode = sys.argv.pop(1)
    if mode == "sealed":
        seal_blobs()
    elif mode != "plain":
        raise SystemExit("first argument: plain or sealed")
    from chromasnap.cli.app import main

    main()
