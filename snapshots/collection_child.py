"""Read one collection of a materialized snapshot with chromadb, to export it or to restore
it into another database. Prints one JSON line (`CHROMASNAP-COLLECTION {...}`).

Runs as a throwaway child process under any interpreter with chromadb (1.0.x or 1.5.x)
and numpy; it imports nothing from chromasnap, so a Rust panic kills only this process.

    python collection_child.py export SRC NAME OUT [--batch N]
    python collection_child.py restore SRC DST NAME --as TARGET --temp TEMP [--replace] [--batch N]
    python collection_child.py drop DST NAME
    python collection_child.py finish DST TEMP TARGET

Restore adds the records to a new collection under a temporary name, checks them, and
only then drops the collection it replaces (with --replace) and renames the new one, so
the target name never holds a half-restored collection.

Embeddings come back bit-identical to what chromadb returns from the snapshot. For the
cosine space chromadb's HNSW stores each vector normalized plus its length and returns
their product, so re-adding what `get` returned would be normalized again and differ in
the last bit; `exact_inputs` finds, per vector, the float32 input whose stored form gives
back exactly the same product (measured: all of 50,000 random vectors), and the result
is checked by reading every restored embedding back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

MARK = "CHROMASNAP-COLLECTION "
CHECKED = "CHROMASNAP-COLLECTION-CHECKED "
"""Printed once the collection under its temporary name is complete and checked: a
parent that sees it and then loses this process finishes the swap with `finish`."""


class Refused(Exception):
    """The restore would overwrite something (exit 3)."""


def _crash_point(name: str) -> None:
    """Test seam (CHROMASNAP_CRASH_AT=name): die here by SIGKILL as a crash would; with
    `parent:name`, take the chromasnap process that started this one down first, as a
    crash of the machine or an OOM kill of the service would."""
    import signal

    at = os.environ.get("CHROMASNAP_CRASH_AT", "")
    if at in (name, f"parent:{name}"):
        if at.startswith("parent:"):
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _client(path: str) -> Any:
    import chromadb  # type: ignore[import-untyped,unused-ignore]
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))


def _space(col: Any) -> str:
    cfg = getattr(col, "configuration", None) or {}
    hnsw = cfg.get("hnsw") if isinstance(cfg, dict) else None
    space = (hnsw or {}).get("space") if isinstance(hnsw, dict) else None
    return str(space or (col.metadata or {}).get("hnsw:space") or "l2")


def _pages(col: Any, batch: int, include: list[str]) -> Any:
    """The collection's records in pages of `batch`, in chromadb's own order."""
    total, offset = col.count(), 0
    while offset < total:
        got = col.get(limit=batch, offset=offset, include=include)
        if not got["ids"]:
            break
        yield got
        offset += len(got["ids"])


# --- exact cosine inputs -----------------------------------------------------------------------


def _stored(y: Any) -> tuple[Any, Any]:
    """What chromadb's hnswlib keeps for float32 rows `y` in cosine space: the length
    (a float32 sum of squares in index order, then sqrtf) and the normalized row."""
    import numpy as np

    f32 = np.float32
    length = np.sqrt(np.cumsum(y * y, axis=-1, dtype=f32)[..., -1], dtype=f32)
    inv = f32(1.0) / (length + f32(1e-30))
    return length, (y * inv[..., None]).astype(f32)


def readback(y: Any) -> Any:
    """What `get` returns for float32 rows `y` added in cosine space."""
    import numpy as np

    length, unit = _stored(y)
    return (unit * length[..., None]).astype(np.float32)


def exact_inputs(target: Any, span: int = 2, lengths: int = 3) -> Any:
    """float32 rows whose cosine readback equals `target` exactly, where one exists
    within `span` ulps per component and `lengths` ulps of the length (else the target)."""
    import numpy as np

    f32 = np.float32
    y = target.copy()
    todo = np.where(~(readback(y) == target).all(axis=1))[0]
    if not len(todo):
        return y
    t = target[todo]
    up, down = [t], [t]
    for _ in range(span):
        up.append(np.nextafter(up[-1], f32(np.inf)))
        down.append(np.nextafter(down[-1], f32(-np.inf)))
    cand = np.stack(down[::-1] + up[1:])  # ascending: t - span ulps .. t + span ulps
    k = cand.shape[0]
    base_len = _stored(t)[0]
    tries = [base_len]
    hi = lo = base_len
    for _ in range(lengths):
        hi, lo = np.nextafter(hi, f32(np.inf)), np.nextafter(lo, f32(-np.inf))
        tries += [hi, lo]
    left = np.arange(len(todo))
    dim = t.shape[1]
    for length in tries:
        if not len(left):
            break
        ln, tt, cc = length[left], t[left], cand[:, left, :]
        inv = f32(1.0) / (ln + f32(1e-30))
        valid = ((cc * inv[None, :, None]).astype(f32) * ln[None, :, None]) == tt[None]
        complete = valid.any(axis=0).all(axis=1)
        nearest = np.where(valid, np.abs(np.arange(k) - span)[:, None, None], k).argmin(axis=0)
        low = valid.argmax(axis=0)
        high = k - 1 - valid[::-1].argmax(axis=0)

        def pick(i: Any, cc: Any = cc) -> Any:
            return np.take_along_axis(cc, i[None], axis=0)[0]

        near = pick(nearest)
        bigger = np.where(tt >= 0, pick(high), pick(low))
        smaller = np.where(tt >= 0, pick(low), pick(high))
        best, got = near.copy(), complete & (_stored(near)[0] == ln)
        # move a prefix of components to their larger (or smaller) valid choice until the
        # float32 length lands exactly: the length grows with the prefix
        rest = np.where(complete & ~got)[0]
        for alt, grow in ((bigger, True), (smaller, False)):
            a, b = np.zeros(len(rest), int), np.full(len(rest), dim)
            for _ in range(int(np.ceil(np.log2(dim + 1))) + 1):
                if not len(rest):
                    break
                mid = (a + b) // 2
                trial = np.where(np.arange(dim)[None, :] < mid[:, None], alt[rest], near[rest])
                tl = _stored(trial)[0]
                hit = (tl == ln[rest]) & ~got[rest]
                best[rest[hit]] = trial[hit]
                got[rest[hit]] = True
                more = tl < ln[rest] if grow else tl > ln[rest]
                a, b = np.where(more, mid + 1, a), np.where(more, b, mid)
        y[todo[left[got]]] = best[got]
        left = left[~got]
    return y


# --- export --------------------------------------------------------------------------------------


def export(src: str, name: str, out: str, batch: int) -> dict[str, Any]:
    col = _client(src).get_collection(name, embedding_function=None)
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for page in _pages(col, batch, ["documents", "metadatas", "embeddings"]):
            embs = page["embeddings"]
            for i, rid in enumerate(page["ids"]):
                rec = {
                    "id": rid,
                    "document": page["documents"][i],
                    "metadata": page["metadatas"][i],
                    "embedding": [float(x) for x in embs[i]],
                }
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        fh.flush()
        os.fsync(fh.fileno())
    return {
        "records": n,
        "collection": name,
        "metadata": col.metadata,
        "configuration": _jsonable(getattr(col, "configuration", None)),
        "space": _space(col),
    }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


# --- restore -------------------------------------------------------------------------------------


def _add(col: Any, ids: list[str], embs: Any, docs: list[Any], metas: list[Any]) -> None:
    """Add a page; records with and without documents or metadata go in separate calls
    (chromadb refuses a None inside a documents or metadatas list)."""
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i in range(len(ids)):
        groups.setdefault((docs[i] is not None, bool(metas[i])), []).append(i)
    for (has_doc, has_meta), idx in groups.items():
        col.add(
            ids=[ids[i] for i in idx],
            embeddings=embs[idx],
            documents=[docs[i] for i in idx] if has_doc else None,
            metadatas=[metas[i] for i in idx] if has_meta else None,
        )


def _config(col: Any) -> Any:
    cfg = getattr(col, "configuration_json", None) or getattr(col, "configuration", None)
    return json.loads(json.dumps(cfg, default=str)) if cfg else None


def _create_like(client: Any, source: Any, name: str) -> Any:
    """A new empty collection with the source's metadata and index configuration. First
    the way most collections were made (metadata only), which chromadb records exactly;
    if its configuration then differs, again with the configuration passed explicitly
    (chromadb records the embedding function of such a collection as 'legacy')."""
    meta = source.metadata or None
    col = client.create_collection(name, metadata=meta, embedding_function=None)
    want = _config(source)
    if want is None or _config(col) == want:
        return col
    client.delete_collection(name)
    cfg = getattr(source, "configuration", None)
    return client.create_collection(name, metadata=meta, configuration=cfg, embedding_function=None)


def restore(
    src: str, dst: str, name: str, target: str, temp: str, replace: bool, batch: int
) -> dict[str, Any]:
    import numpy as np

    t0 = time.monotonic()
    source = _client(src).get_collection(name, embedding_function=None)
    client = _client(dst)
    existing = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    if target in existing and not replace:
        raise Refused(f"collection {target} exists in the database; give --replace or --as NEW_NAME")
    col = _create_like(client, source, temp)
    cosine = _space(source) == "cosine"
    expected: dict[str, bytes] = {}
    n = 0
    solve_s = 0.0
    try:
        for page in _pages(source, batch, ["documents", "metadatas", "embeddings"]):
            embs = np.asarray(page["embeddings"], dtype=np.float32)
            for rid, row in zip(page["ids"], embs, strict=True):
                expected[rid] = row.tobytes()
            if cosine:
                t = time.monotonic()
                embs = exact_inputs(embs)
                solve_s += time.monotonic() - t
            _add(col, page["ids"], embs, page["documents"], page["metadatas"])
            n += len(page["ids"])
            _crash_point("collection-adding")
        if col.count() != n or n != source.count():
            raise RuntimeError(f"restored {col.count()} records of {source.count()}")
        inexact = 0
        for page in _pages(col, batch, ["embeddings"]):
            got = np.asarray(page["embeddings"], dtype=np.float32)
            for rid, row in zip(page["ids"], got, strict=True):
                if expected.get(rid) != row.tobytes():
                    inexact += 1
    except BaseException:
        client.delete_collection(temp)  # the target name was never touched
        raise
    report = {
        "records": n,
        "target": target,
        "replaced": target in existing,
        "space": _space(source),
        "exact_embeddings": n - inexact,
        "solve_s": round(solve_s, 3),
    }
    sys.stdout.write(CHECKED + json.dumps(report) + "\n")
    sys.stdout.flush()
    _crash_point("collection-added")
    finish(dst, temp, target, client)
    report["duration_s"] = round(time.monotonic() - t0, 3)
    return report


def finish(dst: str, temp: str, target: str, client: Any = None) -> dict[str, Any]:
    """Put the complete collection `temp` in place of `target`: drop `target` if it exists,
    then rename. Run again after a crash, it completes whichever step is left."""
    client = client or _client(dst)
    names = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    if temp not in names:
        return {"finished": target in names}
    if target in names:
        client.delete_collection(target)
        _crash_point("collection-dropped")
    client.get_collection(temp, embedding_function=None).modify(name=target)
    return {"finished": True}


def drop(dst: str, name: str) -> dict[str, Any]:
    """Drop a collection if it exists (what a failed restore left under its temporary name)."""
    client = _client(dst)
    names = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    if name in names:
        client.delete_collection(name)
    return {"dropped": name in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="collection_child.py", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("src")
    e.add_argument("name")
    e.add_argument("out")
    e.add_argument("--batch", type=int, default=1000)
    r = sub.add_parser("restore")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("name")
    r.add_argument("--as", dest="target", required=True)
    r.add_argument("--temp", required=True)
    r.add_argument("--replace", action="store_true")
    r.add_argument("--batch", type=int, default=2000)
    d = sub.add_parser("drop")
    d.add_argument("dst")
    d.add_argument("name")
    f = sub.add_parser("finish")
    f.add_argument("dst")
    f.add_argument("temp")
    f.add_argument("target")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "export":
            report = export(a.src, a.name, a.out, a.batch)
        elif a.cmd == "drop":
            report = drop(a.dst, a.name)
        elif a.cmd == "finish":
            report = finish(a.dst, a.temp, a.target)
        else:
            report = restore(a.src, a.dst, a.name, a.target, a.temp, a.replace, a.batch)
    except Refused as exc:
        sys.stdout.write(MARK + json.dumps({"error": str(exc), "refused": True}) + "\n")
        return 3
    except Exception as exc:
        sys.stdout.write(MARK + json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n")
        return 1
    sys.stdout.write(MARK + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
