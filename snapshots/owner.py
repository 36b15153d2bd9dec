"""Who owns a restored database: the owner of the database it replaces, else the recorded one.

A restore run as root (a cron job, `docker exec`, a deploy script) would otherwise leave
every file owned by root, and the Chroma process, running as its own user, then fails
with "attempt to write a readonly database". The owner to give the restored directory
and every file in it is, in order:

1. the owner of the database directory being replaced, when there is one. A store may
   have been written by someone else (a shared bucket), so an owner recorded in it is not
   trusted over what is on this machine;
2. the owner recorded in the snapshot (`Snapshot.owner`), when restoring onto a bare path
   (a fresh machine, a deleted database);
3. nobody: the files stay with the restoring user (snapshots taken before owners were
   recorded).

Changing the owner needs root (or, for the group only, membership of that group); when
the restoring user cannot, the files keep its ownership and the restore reports a
one-line warning saying what to run.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from chromasnap.manifest import Owner


@dataclass(frozen=True)
class Ownership:
    uid: int
    gid: int
    source: str
    """'replaced database' or 'snapshot' (where the owner came from)."""


def of_directory(path: Path) -> Owner:
    """The owner to record for a database directory (followed if it is a symlink)."""
    st = os.stat(path)
    return Owner(uid=st.st_uid, gid=st.st_gid)


def target_owner(db: Path, recorded: Owner | None) -> Ownership | None:
    """The owner a restore of `db` gives its files (see the module docstring)."""
    try:
        st = os.stat(db)
    except FileNotFoundError:
        st = None
    if st is not None:
        return Ownership(st.st_uid, st.st_gid, "replaced database")
    if recorded is not None:
        return Ownership(recorded.uid, recorded.gid, "snapshot")
    return None


def apply(root: Path, owner: Ownership, shown: Path, include_root: bool = True) -> str | None:
    """Give `root` (unless not `include_root`) and everything under it to `owner`, never
    following a symlink. Returns a one-line warning if this user may not, else None.
    `shown` is the database path to name in the warning."""
    paths: list[str] = [str(root)] if include_root else []
    for top, dirs, files in os.walk(root):
        paths += [os.path.join(top, n) for n in dirs + files]
    for p in paths:
        st = os.lstat(p)
        if (st.st_uid, st.st_gid) == (owner.uid, owner.gid):
            continue
        try:
            os.lchown(p, owner.uid, owner.gid)
        except PermissionError:
            return warning(shown, owner)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EINVAL):  # EINVAL: uid not mapped here
                return warning(shown, owner)
            raise
    return None


def warning(db: Path, owner: Ownership) -> str:
    me = f"uid {os.geteuid()} gid {os.getegid()}"
    return (
        f"{db} is now owned by {me} (the restoring user), not by uid {owner.uid} gid {owner.gid} "
        f"(the {owner.source}'s owner), which this user may not give files to: run the restore "
        f"as root or as that user, or `chown -R {owner.uid}:{owner.gid} {db}` before starting Chroma"
    )
