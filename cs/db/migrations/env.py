"""Alembic's environment for the CS database, run by :mod:`cs.db.migrations` on a connection it opens.

The connection comes in ``config.attributes["connection"]`` (a synchronous facade of the async
engine's connection, already inside the transaction that takes the write lock), so there is no
alembic.ini and no URL here. Autogenerate compares with the models of :mod:`cs.db.models` and
renders "batch" operations, which SQLite needs to alter tables and PostgreSQL runs as plain ALTERs.

Autogenerate runs against a scratch SQLite database, which cannot reflect expression-based
indexes (e.g. ``uq_alerts_open`` on ``coalesce(disk_id, '')``), so alembic skips them; the hook
below adds those of the tables a revision creates. Such an index added to an existing table needs
a hand-written ``op.create_index``.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.operations import ops
from sqlalchemy import Column, Index

from cs.db.models import Base


def _is_expression_index(index: Index) -> bool:
    return any(not isinstance(expr, Column) for expr in index.expressions)


def add_expression_indexes(_context: Any, _revision: Any, directives: list[Any]) -> None:
    for upgrade in directives[0].upgrade_ops_list:
        created = {op.table_name for op in upgrade.ops if isinstance(op, ops.CreateTableOp)}
        for table in Base.metadata.sorted_tables:
            if table.name in created:
                upgrade.ops.extend(ops.CreateIndexOp.from_index(index)
                                   for index in sorted(table.indexes, key=lambda i: str(i.name))
                                   if _is_expression_index(index))


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cs.db.migrations (python -m cs.db.migrations --help)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  transactional_ddl=True, compare_type=True, process_revision_directives=add_expression_indexes)
with context.begin_transaction():
    context.run_migrations()
