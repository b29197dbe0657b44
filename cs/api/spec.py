"""Declare what a CS route is: who may call it and the shapes it takes and returns.

    @spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(COMPONENT))
    async def get_components(request): \"\"\"Registered components, a page at a time.\"\"\"

The decorator returns the handler itself (only attributes are added). cs/api/openapi.py reads
them to build the OpenAPI document from the router, so the document cannot drift from the
routes; the auth middleware (common/http.py) refuses callers whose role a route does not declare.
A route without the decorator still appears in the document, without roles or schemas, and is
left to its handler's own role check. Schemas are JSON Schema (OpenAPI 3.1 dialect) dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.http import ROUTE_ROLES_ATTR

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTR = "__drlab_spec__"
ADMIN = ("admin",)  # operators: admin certificate or admin session; readers too on GET
COMPONENTS = ("ps", "mt", "agent")
MAX_PAGE = 1000  # the largest ``limit`` a list route accepts
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class RouteSpec:
    """What a handler declares; ``public`` routes need no credentials (the architecture's allow-list)."""

    roles: tuple[str, ...] = ()
    request: Schema | None = None
    response: Schema | None = None
    query: Mapping[str, Schema] = field(default_factory=dict)
    required_query: tuple[str, ...] = ()
    public: bool = False
    status: int = 200
    tags: tuple[str, ...] = ()


def route(*, roles: tuple[str, ...] = (), request: Schema | None = None, response: Schema | None = None,
          query: Mapping[str, Schema] | None = None, required_query: tuple[str, ...] = (), public: bool = False,
          status: int = 200, tags: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Attach a :class:`RouteSpec` to a handler; non-public routes must name their roles."""
    if public == bool(roles):
        raise ValueError("a route is either public or names the roles that may call it")
    unknown = set(required_query) - set(query or {})
    if unknown:
        raise ValueError(f"required query parameters {sorted(unknown)} are not declared")
    declared = RouteSpec(roles=tuple(roles), request=request, response=response, query=dict(query or {}),
                         required_query=tuple(required_query), public=public, status=status, tags=tuple(tags))

    def mark(handler: F) -> F:
        setattr(handler, SPEC_ATTR, declared)
        if not public:
            setattr(handler, ROUTE_ROLES_ATTR, declared.roles)
        return handler

    return mark


def spec_of(handler: Any) -> RouteSpec | None:
    found = getattr(handler, SPEC_ATTR, None)
    return found if isinstance(found, RouteSpec) else None


# ------------------------------------------------------------------ schema helpers


def obj(properties: Mapping[str, Schema], required: tuple[str, ...] | None = None, *,
        extra: bool = True) -> Schema:
    """An object schema; ``required`` defaults to every property."""
    out: Schema = {"type": "object", "properties": dict(properties),
                   "required": list(properties if required is None else required)}
    if not extra:
        out["additionalProperties"] = False
    return out


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJ: Schema = {"type": "object"}
HEX_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
OK: Schema = obj({"ok": BOOL})

PAGE_QUERY: dict[str, Schema] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    "cursor": {"type": "string", "description": "the `next` of the previous page"},
}


def page_of(item: Schema) -> Schema:
    """A page of a list route: ``{items, next}``, ``next`` null on the last page."""
    return obj({"items": array(item), "next": nullable(STR)})
