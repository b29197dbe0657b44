"""What the admin-managed parts of the data model share: names, strict bodies, lookups, pages.

Sites, policies, recovery plans and accounts are named by the operator (cs/sites.py,
cs/policies.py, cs/plans.py, cs/accounts.py); the name is the primary key and never changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
M = TypeVar("M")


def name(value: Any, what: str = "name") -> str:
    """A name: 1 to 64 of lowercase letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit."""
    if not isinstance(value, str) or not NAME.match(value):
        raise errors.BadRequest(f"{what} must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-' "
                                "(starting with a letter or digit)")
    return value


def body_keys(body: Mapping[str, Any], *, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    """400 for a field the body may not have, or a required one it lacks."""
    allowed = set(allowed)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.BadRequest(f"unknown field {unknown[0][:64]!r}; known: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in body]
    if missing:
        raise errors.BadRequest(f"missing field {missing[0]!r}")


def text(body: Mapping[str, Any], field: str, *, max_len: int, default: str | None = None) -> str:
    value = body.get(field, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise errors.BadRequest(f"{field} must be a string of at most {max_len} characters")
    return value


async def get_or_404(session: AsyncSession, model: type[M], key: str, what: str, *,
                     for_update: bool = False) -> M:
    if for_update:
        pk = model.__mapper__.primary_key[0]  # type: ignore[attr-defined]
        row = (await session.scalars(select(model).where(pk == key).with_for_update())).first()
    else:
        row = await session.get(model, key)
    if row is None:
        raise errors.NotFound(f"no {what} {key}")
    return row


async def create_new(session: AsyncSession, row: Any, key: str, what: str) -> None:
    """Add ``row`` unless one with its name exists (409)."""
    if await session.get(type(row), key) is not None:
        raise errors.Conflict(f"{what} {key} already exists")
    session.add(row)
    await session.flush()
