"""chromasnap.cli: the `chromasnap` command line (a thin layer over chromasnap.snapshots)."""
