"""`chromasnap schema`: JSON Schema of the documents in a store."""

from __future__ import annotations

from .common import DbOpt, DebugOpt, JsonOpt, StoreOpt, handle_errors, print_json


@handle_errors
def schema_cmd(
    db: DbOpt = None, store: StoreOpt = None, json_out: JsonOpt = True, debug: DebugOpt = False
) -> None:
    """Print the JSON Schema of the store config, snapshot and chunk-list documents."""
    from chromasnap.manifest import json_schemas

    print_json(json_schemas())
