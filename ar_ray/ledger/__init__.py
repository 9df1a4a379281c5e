"""The record of a run: the append-only ledger (store), questions asked of it (analysis), its history as git (lineage).

The ledger's public names are here, so `from ar_ray.ledger import load` reads any run dir."""

from ar_ray.ledger.store import RUN_FILE, SCHEMA, Ledger, LedgerError, load, read_table

__all__ = ["RUN_FILE", "SCHEMA", "Ledger", "LedgerError", "load", "read_table"]
