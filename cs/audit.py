"""The audit log: one row per state change of the system of record, written in its transaction.

A session hook (``after_flush`` on every SQLAlchemy session) turns each created, updated or
deleted row of an audited model into an :class:`~cs.db.models_access.AuditEvent` — time, actor, entity
(the table) and id (the primary key), action and ``{column: [old, new]}`` — added to the same
session, so the commit that stores the change stores its audit row and a rollback drops both.
Nothing has to be called at the change's site, so no change can forget its row. Bulk statements
given to ``session.execute()`` (``insert()`` of one row with RETURNING of its key, ``update()``,
``delete()``) are caught by a ``do_orm_execute`` hook that reads the touched rows before and
after. What it cannot see: raw SQL, and multi-row inserts (a restore).

Every model is audited except :data:`SKIPPED_TABLES` (ephemeral or the log itself); columns that
move on every heartbeat or progress report (:data:`VOLATILE`) are left out, and a change of
volatile columns only leaves no row. Secret columns (:func:`is_secret`) show ``"<redacted>"``.

The actor is a context variable: the CS app's middleware sets it to ``role:id`` of the verified
caller (operator or component) for the request; anything else (job runner, sweepers) is
``system``.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Result, Table, event, inspect, select, tuple_
from sqlalchemy.exc import ResourceClosedError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from cs.db.models import Base
from cs.db.models_access import AuditEvent

SYSTEM = "system"
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("drlab_audit_actor", default=SYSTEM)
REDACTED = "<redacted>"
MAX_VALUE_CHARS = 2000
# ephemeral or bookkeeping: the webhook's outbox and the health windows (the alerts they lead to are audited)
SKIPPED_TABLES = frozenset({"audit_log", "challenges", "operator_sessions", "alembic_version", "alert_events",
                            "health_windows"})
VOLATILE: dict[str, frozenset[str]] = {
    "*": frozenset({"updated_ns"}),
    "components": frozenset({"last_heartbeat", "metrics"}),
    "jobs": frozenset({"lease_until_ns", "steps", "percent"}),
    "disks": frozenset({"percent", "bytes_done", "bytes_total"}),
    "resyncs": frozenset({"percent", "bytes_total", "bytes_compared", "bytes_sent"}),
    "disk_drains": frozenset({"lease_until_ns"}),
    "hypervisors": frozenset({"last_discovery_ns"}),  # every discovery (cs/hypervisors.py)
    "discovered_machines": frozenset({"seen_ns"}),
    "alert_events": frozenset({"lease_until_ns"}),
}
META_SKIPPED_KEYS = frozenset({"settings_version"})  # bumped by every change: the change is the row
_SECRET = re.compile(r"password|passphrase|secret|token|salt|hash|_enc$|key_b64$|private")


def is_secret(table: str, column: str) -> bool:
    """Whether a column's values must never appear in the log (pure)."""
    return (table == "meta" and column == "value") or bool(_SECRET.search(column))


def actor_of(role: str, ident_id: str) -> str:
    return f"{role}:{ident_id}"[:128]


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Attribute the changes made inside the block (in this task) to ``actor``."""
    token = ACTOR.set(actor[:128])
    try:
        yield
    finally:
        ACTOR.reset(token)


def _value(value: Any) -> Any:
    """A column value as the log keeps it: JSON-safe, long values cut to a marker."""
    if isinstance(value, bytes):
        value = f"<{len(value)} bytes>"
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = json.dumps(str(value))
    if len(text) > MAX_VALUE_CHARS:
        return f"<{len(text)} chars>"
    return json.loads(text)


def _shown(table: str, column: str, value: Any) -> Any:
    if value is None:
        return None
    return REDACTED if is_secret(table, column) else _value(value)


def _changes(obj: Any, action: str) -> tuple[str, str, dict[str, list[Any]]] | None:
    state = inspect(obj)
    mapper = state.mapper
    table = mapper.local_table.name
    if table in SKIPPED_TABLES:
        return None
    pk = [c.key for c in mapper.primary_key]
    pk_values = [getattr(obj, k, None) for k in pk]
    if table == "meta" and pk_values and pk_values[0] in META_SKIPPED_KEYS:
        return None
    skipped = VOLATILE["*"] | VOLATILE.get(table, frozenset()) | set(pk)
    changes: dict[str, list[Any]] = {}
    for attr in mapper.column_attrs:
        key = attr.key
        if key in skipped:
            continue
        if action == "update":
            hist = state.attrs[key].history
            if not hist.has_changes():
                continue
            old = hist.deleted[0] if hist.deleted else None
            new = hist.added[0] if hist.added else None
            if old == new:
                continue
        else:
            current = state.dict.get(key)
            old, new = (None, current) if action == "create" else (current, None)
            if old is None and new is None:
                continue
        changes[key] = [_shown(table, key, old), _shown(table, key, new)]
    if action == "update" and not changes:
        return None
    return table, "/".join(str(v) for v in pk_values), changes


def events_of(session: Session, now_ns: int, actor: str) -> list[AuditEvent]:
    """The audit rows of what ``session`` is flushing (its new, dirty and deleted objects)."""
    out = []
    for objects, action in ((session.new, "create"), (session.dirty, "update"), (session.deleted, "delete")):
        for obj in objects:
            if isinstance(obj, AuditEvent):
                continue
            found = _changes(obj, action)
            if found is not None:
                table, entity_id, changes = found
                out.append(AuditEvent(at_ns=now_ns, actor=actor, entity=table, entity_id=entity_id[:255],
                                      action=action, changes=changes))
    return out


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    # after_flush still sees the flushed objects' history (and the ids the database gave them); the
    # rows added here are flushed by the next flush of the same transaction (commit flushes until clean)
    rows = events_of(session, time.time_ns(), ACTOR.get())
    if rows:
        session.add_all(rows)


# -- bulk statements: INSERT/UPDATE/DELETE given to session.execute() bypass the flush ---------------

def _row_changes(table: Table, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, list[Any]]:
    skipped = VOLATILE["*"] | VOLATILE.get(table.name, frozenset()) | {c.name for c in table.primary_key.columns}
    changes = {}
    for col in table.columns:
        key = col.name
        before = None if old is None else old.get(key)
        after = None if new is None else new.get(key)
        if key in skipped or before == after:
            continue
        changes[key] = [_shown(table.name, key, before), _shown(table.name, key, after)]
    return changes


def _rows(session: Session, table: Table, where: Any) -> dict[str, dict[str, Any]]:
    stmt = select(table) if where is None else select(table).where(where)
    pk = [c.name for c in table.primary_key.columns]
    out = {}
    for row in session.execute(stmt).mappings():
        out["/".join(str(row[k]) for k in pk)] = dict(row)
    return out


def _bulk_events(table: Table, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[AuditEvent]:
    now, actor, out = time.time_ns(), ACTOR.get(), []
    for entity_id in sorted(before.keys() | after.keys()):
        old, new = before.get(entity_id), after.get(entity_id)
        if table.name == "meta" and (old or new or {}).get("key") in META_SKIPPED_KEYS:
            continue
        action = "create" if old is None else "delete" if new is None else "update"
        changes = _row_changes(table, old, new)
        if changes or action != "update":
            out.append(AuditEvent(at_ns=now, actor=actor, entity=table.name, entity_id=entity_id[:255],
                                  action=action, changes=changes))
    return out


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(orm_state: ORMExecuteState) -> Result[Any] | None:
    """Audit a bulk INSERT (one row), UPDATE or DELETE of an audited table: read the rows it touches
    before and after, in its transaction, and log what changed."""
    if not (orm_state.is_insert or orm_state.is_update or orm_state.is_delete):
        return None
    named = getattr(getattr(orm_state.statement, "table", None), "name", None)
    table = Base.metadata.tables.get(named) if isinstance(named, str) else None  # the plain table, not
    if table is None or table.name in SKIPPED_TABLES:                             # the ORM-annotated one
        return None
    if isinstance(orm_state.parameters, list) and len(orm_state.parameters) > 1:
        return None  # executemany (a restore, a copy): not one change an operator made
    session = orm_state.session
    pk = list(table.primary_key.columns)
    if orm_state.is_insert:
        result = orm_state.invoke_statement()
        try:
            returned = set(result.keys())
        except ResourceClosedError:  # no RETURNING
            returned = set()
        if any(c.name not in returned for c in pk):
            return result  # no returned key: the new row cannot be named (the CS always returns it)
        frozen = result.freeze()
        keys = [tuple(r._mapping[c.name] for c in pk) for r in frozen().all()]
        if keys:
            after = _rows(session, table, tuple_(*pk).in_(keys))
            session.add_all(_bulk_events(table, {}, after))
        return frozen()
    where = orm_state.statement.whereclause  # type: ignore[attr-defined]
    before = _rows(session, table, where)
    result = orm_state.invoke_statement()
    if before:
        after = {} if orm_state.is_delete else _rows(session, table, tuple_(*pk).in_(
            [tuple(r[c.name] for c in pk) for r in before.values()]))
        session.add_all(_bulk_events(table, before, after))
    return result


def event_view(row: AuditEvent) -> dict[str, Any]:
    return {"audit_id": row.audit_id, "at_ns": row.at_ns, "actor": row.actor, "entity": row.entity,
            "entity_id": row.entity_id, "action": row.action, "changes": row.changes}


async def listing(session: AsyncSession, *, limit: int, before: int | None, entity: str | None,
                  entity_id: str | None, actor: str | None) -> dict[str, Any]:
    """One page of the log, newest first: ``{items, next}`` (``next``: a cursor for ``before``)."""
    stmt = select(AuditEvent).order_by(AuditEvent.audit_id.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(AuditEvent.audit_id < before)
    if entity is not None:
        stmt = stmt.where(AuditEvent.entity == entity)
    if entity_id is not None:
        stmt = stmt.where(AuditEvent.entity_id == entity_id)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    rows = list((await session.scalars(stmt)).all())
    items = [event_view(r) for r in rows[:limit]]
    return {"items": items, "next": str(rows[limit - 1].audit_id) if len(rows) > limit else None}


ASSIGNMENT_COLUMNS = ("ps_id", "mt_id")
MAX_SCAN = 5000


async def assignments(session: AsyncSession, disk_id: str, limit: int) -> list[dict[str, Any]]:
    """A disk's assignment history (disk -> PS -> MT), newest first, from the audit log: every
    change of its ``ps_id`` or ``mt_id`` with its time and actor (the newest ``MAX_SCAN`` changes)."""
    stmt = (select(AuditEvent).where(AuditEvent.entity == "disks", AuditEvent.entity_id == disk_id)
            .order_by(AuditEvent.audit_id.desc()).limit(MAX_SCAN))
    out = []
    for row in (await session.scalars(stmt)).all():
        moved = {k: v for k, v in (row.changes or {}).items() if k in ASSIGNMENT_COLUMNS}
        if moved:
            out.append({"at_ns": row.at_ns, "actor": row.actor, "action": row.action,
                        **{f"{k}_from": v[0] for k, v in moved.items()}, **{f"{k}_to": v[1] for k, v in moved.items()}})
            if len(out) >= limit:
                break
    return out
