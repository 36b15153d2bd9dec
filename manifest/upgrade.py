"""Upgrading documents written by older format versions.

Format 1 is the first; there is nothing older to upgrade yet. The rule for later
versions: each version N+1 adds a function here that turns a version-N document
(as plain JSON data) into version N+1, `loads` applies them in order, and
`chromasnap` rewrites upgraded documents only under the store lock, atomically.
"""

from __future__ import annotations

from typing import Any

UPGRADES: dict[int, Any] = {}
"""version N -> callable(dict) -> dict giving version N+1."""
