"""Alembic revisions of the CS schema (one file each; see cs.db.migrations)."""
