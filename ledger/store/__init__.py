"""The batch path's SQL, one class per database.

Each batch runs the same steps in one transaction: read the transfers it refers to, lock its
accounts in id order, (rules run in memory), lock the journal head, write all transfer rows in one
statement, update each touched account once, append the journal block, commit. The two classes
differ only in how each step is best said to their database: PostgreSQL takes arrays
(``unnest``); SQLite takes ``executemany`` inside ``BEGIN IMMEDIATE``.
"""

from ledger.store.base import BatchStore, ConnectionLost, DatabaseFailure, IdClash, JournalHead
from ledger.store.postgres import PostgresBatchStore
from ledger.store.sqlite import SqliteBatchStore

__all__ = [
    "BatchStore",
    "ConnectionLost",
    "DatabaseFailure",
    "IdClash",
    "JournalHead",
    "PostgresBatchStore",
    "SqliteBatchStore",
    "store_for",
]


def store_for(dialect_name: str) -> BatchStore:
    if dialect_name == "postgresql":
        return PostgresBatchStore()
    if dialect_name == "sqlite":
        return SqliteBatchStore()
    raise ValueError(f"no batch store for the {dialect_name} dialect")
