"""Keyset pagination of the CS's list routes: ``?limit=N&cursor=C`` -> ``{items, next}``.

A cursor is opaque to clients: the sort key of the last row of the page, as URL-safe base64 of a
JSON list. A page holds the rows strictly after it in the listing's order (one direction for
every key column), so rows added or removed between pages neither repeat nor shift the others.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from common import errors, http
from cs.api.spec import DEFAULT_PAGE, MAX_PAGE
from cs.state import state_of

PAGE_PARAMS = ("limit", "cursor")
MAX_CURSOR_CHARS = 1024


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[Any, ...] | None


def check_query(query: Mapping[str, str], known: Sequence[str]) -> None:
    """400 for a query parameter the route does not know."""
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(known)}")


def bounded_int(text: str, what: str, high: int) -> int:
    """``text`` as an integer in [1, ``high``]; 400 otherwise (also for thousands of digits, which
    ``int()`` itself refuses with a ValueError: the length is checked first)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= high:
        raise errors.BadRequest(f"{what} must be an integer in [1, {high}]")
    return int(text)


def parse(query: Mapping[str, str], *, max_limit: int = MAX_PAGE, default: int = DEFAULT_PAGE) -> Page:
    """``limit`` in [1, max_limit] (default ``default``) and the decoded ``cursor``; 400 otherwise."""
    text = query.get("limit")
    if text is None:
        limit = default
    elif text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= max_limit:
        limit = int(text)
    else:
        raise errors.BadRequest(f"limit must be an integer in [1, {max_limit}]")
    cursor = query.get("cursor")
    return Page(limit, decode(cursor) if cursor else None)


def encode(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[Any, ...]:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise errors.BadRequest("cursor is too long")
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise errors.BadRequest("cursor is not one this server made") from exc
    if not isinstance(key, list) or not key or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                       for v in key):
        raise errors.BadRequest("cursor is not one this server made")
    return tuple(key)


async def fetch(session: AsyncSession, stmt: Select[Any], keys: Sequence[InstrumentedAttribute[Any]], page: Page,
                *, descending: bool = False) -> tuple[list[Any], str | None]:
    """One page of ``stmt`` (a ``select(Model)``) ordered by ``keys``: (rows, next cursor or None)."""
    if page.after is not None:
        if len(page.after) != len(keys):
            raise errors.BadRequest("cursor is not one of this listing")
        cols = tuple_(*keys)
        stmt = stmt.where(cols < tuple_(*page.after) if descending else cols > tuple_(*page.after))
    stmt = stmt.order_by(*(k.desc() if descending else k.asc() for k in keys)).limit(page.limit + 1)
    rows = list((await session.scalars(stmt)).all())
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[:page.limit]
    return rows, encode([getattr(rows[-1], k.key) for k in keys])


async def named_page(request: web.Request, table: Any,
                     view: Callable[[AsyncSession, Any], Awaitable[dict[str, Any]]]) -> web.Response:
    """An admin's page of a named model (sites, policies, plans, accounts) in name order, each row
    through ``view`` (which may read more in the same session)."""
    http.require_role(request, "admin")
    check_query(request.query, PAGE_PARAMS)
    page = parse(request.query)
    async with state_of(request).db.read() as session:
        rows, nxt = await fetch(session, select(table), [table.name], page)
        items = [await view(session, row) for row in rows]
    return web.json_response({"items": items, "next": nxt})
