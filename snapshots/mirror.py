"""Mirroring: each new snapshot copied to another store (`policy set --mirror URL`) right
after it is taken, never failing the snapshot or the guarded write around it.

The outcome is recorded on the snapshot as an event: `mirrored` (detail: the mirror's
location) or `mirror-failed` (detail: the location and the one-line error). A snapshot is
off the machine once it has a `mirrored` event naming the current mirror; `unmirrored`
lists the others and `mirror_snapshots` (the `chromasnap mirror` command) retries them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chromasnap.manifest import Event, Snapshot

from .crypto import Codec
from .errors import ChromasnapError
from .repository import PasswordSource, Repository
from .store_copy import copy_snapshots
from .stores import is_remote, open_store

MIRRORED = "mirrored"
MIRROR_FAILED = "mirror-failed"


@dataclass
class MirrorResult:
    """What a mirroring run did: snapshots now on the mirror, or why not."""

    mirror: str
    mirrored: list[str] = field(default_factory=list)
    failed: str | None = None
    bytes_sent: int = 0


def check_url(url: str) -> str:
    """A mirror as stored in the policy: an s3:// URL (refused if it carries credentials)
    or an absolute directory path."""
    import os

    if is_remote(url):
        from .s3_backend import parse_s3_url

        parse_s3_url(url)
        return url.rstrip("/")
    return os.path.abspath(url)


def mirrored_to(snap: Snapshot, location: str) -> bool:
    return any(e.kind == MIRRORED and e.detail == location for e in snap.events)


def unmirrored(snaps: list[Snapshot], location: str) -> list[Snapshot]:
    """The snapshots not yet recorded as copied to the mirror at `location`."""
    return [s for s in snaps if not mirrored_to(s, location)]


def _record(repo: Repository, snap_id: str, kind: str, detail: str) -> None:
    event = Event(at=datetime.now(UTC), kind=kind, detail=detail[:500])
    with contextlib.suppress(OSError, ChromasnapError):  # best effort, as every event
        repo.update_snapshot(snap_id, lambda s: s.events.append(event))


def _mirror_password() -> str:
    from .password import read_mirror_password  # a terminal prompt's modules: only when needed

    return read_mirror_password()


def mirror_snapshots(
    repo: Repository,
    url: str,
    ids: list[str],
    *,
    endpoint_url: str | None = None,
    no_cas: bool | None = None,
    password: PasswordSource | None = None,
    codecs: dict[str, Codec] | None = None,
) -> MirrorResult:
    """Copy the snapshots `ids` to the mirror `url` and record the outcome on each; never
    raises for a failure of the mirror (it is returned in `failed`), only for Ctrl-C.

    A mirror that does not exist yet is created like `copy` creates a target: encrypted when
    it is remote or this store is encrypted. An encrypted mirror's password is `password`
    (default `password.read_mirror_password`: the environment, never a prompt); none is a
    failed mirroring like any other. `codecs` keeps, per mirror, the codec that opened it,
    so a long-lived manager derives the mirror's key once."""
    result = MirrorResult(mirror=url)
    location = url
    try:
        target = open_store(url, endpoint_url=endpoint_url, no_cas=no_cas)
        location = result.mirror = target.location
        try:
            res = copy_snapshots(
                repo.backend,
                target,
                ids,
                source=repo,
                password=password or _mirror_password,
                target_codec=(codecs or {}).get(location),
            )
        finally:
            target.close()
        if codecs is not None and res.target_codec is not None and res.target_codec.encrypted:
            codecs[location] = res.target_codec
    except Exception as exc:  # a failed mirror is recorded, never fatal
        result.failed = str(exc) or type(exc).__name__
        for sid in ids:
            _record(repo, sid, MIRROR_FAILED, f"{location}: {result.failed}")
        return result
    result.bytes_sent = res.bytes_sent
    for sid in ids:
        _record(repo, sid, MIRRORED, location)
        result.mirrored.append(sid)
    return result
