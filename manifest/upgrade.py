"""Upgrading documents written by older format versions.

Format 2 added the optional `Snapshot.records` (the record index) and format 3 the optional
`Snapshot.owner`: an older document is a valid newer document without them, so its upgrade
changes nothing, and its id
(computed over the document as written) stays valid. The rule for later
versions: each version N+1 adds a function here that turns a version-N document
(as plain JSON data) into version N+1, `loads` applies them in order, and
`chromasnap` rewrites upgraded documents only under the store lock, atomically.
"""

from __future__ import annotations

from typing import Any

UPGRADES: dict[int, Any] = {1: lambda doc: doc, 2: lambda doc: doc}
"""version N -> callable(dict) -> dict giving version N+1."""
