"""Alembic migrations: the only way the ledger's schema is created or changed."""
