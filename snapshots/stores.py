"""Where a store is: a URL or path turned into a backend, in one place.

`open_store("s3://bucket/prefix")` is an `S3Backend` (credentials and region from the
standard AWS chain, the endpoint from `endpoint_url` or AWS_ENDPOINT_URL) used through
`RetryingBackend`; anything else without a scheme is a directory (`LocalBackend`). Every
command, `SnapshotManager` and `copy` open stores here.

A remote store cannot hold what belongs to one machine: the database write lock and the
write intents of guarded writes stay beside the database, in `beside_db(db)`
(`<db parent>/<db name>.chromasnap-local`, a LocalBackend directory; docs/format.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .backend import StorageBackend
from .errors import UsageError
from .local_backend import LocalBackend

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = ("s3",)


def is_remote(store: str | os.PathLike[str]) -> bool:
    """Whether `store` names a remote store (a URL with a scheme); a local path otherwise.
    An unsupported scheme is a UsageError (naming only the scheme: a URL may hold a secret)."""
    if not isinstance(store, str):
        return False
    m = _SCHEME.match(store)
    if m is None:
        return False
    if m.group(1).lower() not in REMOTE_SCHEMES:
        scheme = m.group(1)[:20]
        raise UsageError(f"unsupported store scheme {scheme!r}: give s3://bucket/prefix or a directory")
    return True


def connections_default() -> int:
    """Parallel requests to a remote store: CHROMASNAP_CONNECTIONS, default 8 (a laptop uplink)."""
    raw = os.environ.get("CHROMASNAP_CONNECTIONS", "")
    try:
        n = int(raw) if raw else 8
    except ValueError:
        raise UsageError("CHROMASNAP_CONNECTIONS must be a whole number") from None
    if n < 1 or n > 256:
        raise UsageError("CHROMASNAP_CONNECTIONS must be between 1 and 256")
    return n


def no_cas_default() -> bool:
    """CHROMASNAP_NO_CAS=1: accept a server that ignores conditional writes (lock objects)."""
    return os.environ.get("CHROMASNAP_NO_CAS", "").lower() in ("1", "true", "yes")


def open_store(
    store: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    connections: int | None = None,
    no_cas: bool | None = None,
    allow_foreign_owner: bool | None = None,
) -> StorageBackend:
    """The backend of `store`: `s3://bucket/prefix` or a directory path. Nothing is created
    and, for S3, nothing is requested yet (a missing bucket or wrong credentials show on
    first use, as one line)."""
    if is_remote(store):
        from .retry import RetryingBackend
        from .s3_backend import S3Backend

        s3 = S3Backend(
            str(store),
            endpoint_url=endpoint_url,
            connections=connections if connections is not None else connections_default(),
        )
        backend = RetryingBackend(s3)
        backend.no_cas = no_cas if no_cas is not None else no_cas_default()
        return backend
    return LocalBackend(Path(os.path.abspath(store)), allow_foreign_owner)


def beside_db(db_path: Path) -> Path:
    """Where a database's machine-local state lives when its store is remote."""
    return db_path.parent / f"{db_path.name}.chromasnap-local"


def open_beside_db(db_path: Path) -> LocalBackend:
    """The LocalBackend of `beside_db(db_path)` (created on first write: the write lock and
    intents create it)."""
    return LocalBackend(beside_db(db_path))
