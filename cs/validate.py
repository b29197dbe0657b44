"""Checks of request fields: each returns the typed value or raises ``BadRequest`` naming the field."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

from common import errors

HEX_ID = re.compile(r"^[0-9a-f]{32}\Z")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}\Z")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\Z")
MAX_U63 = 2**63 - 1


def hex_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not HEX_ID.match(value):
        raise errors.BadRequest(f"{what} must be 32 lowercase hex characters")
    return value


def string(body: dict[str, Any], field: str, *, max_len: int = 255, pattern: re.Pattern[str] | None = None) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise errors.BadRequest(f"{field} must be a non-empty string of at most {max_len} characters")
    if pattern is not None and not pattern.match(value):
        raise errors.BadRequest(f"{field} has invalid characters")
    return value


def choice(body: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    value = body.get(field)
    if value not in allowed:
        raise errors.BadRequest(f"{field} must be one of {', '.join(allowed)}")
    return str(value)


def flag(body: dict[str, Any], field: str, default: bool = False) -> bool:
    """An optional boolean field: absent is ``default``; anything but true or false is refused."""
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise errors.BadRequest(f"{field} must be true or false")
    return value


def integer(body: dict[str, Any], field: str, *, low: int = 0, high: int = MAX_U63) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.BadRequest(f"{field} must be an integer in [{low}, {high}]")
    return value


def number(body: dict[str, Any], field: str, *, low: float, high: float) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise errors.BadRequest(f"{field} must be a number in [{low}, {high}]")
    return float(value)


def b64(body: dict[str, Any], field: str, *, max_bytes: int = 1024) -> bytes:
    value = body.get(field)
    if not isinstance(value, str) or len(value) > 4 * max_bytes // 3 + 4:
        raise errors.BadRequest(f"{field} must be base64 of at most {max_bytes} bytes")
    try:
        return base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.BadRequest(f"{field} is not valid base64") from exc


def address(body: dict[str, Any], field: str = "address") -> str:
    value = string(body, field, max_len=253)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME.match(value):
        raise errors.BadRequest(f"{field} must be an IP address or a DNS name")
    return value


def ports(body: dict[str, Any], field: str = "ports") -> dict[str, int]:
    value = body.get(field, {})
    if not isinstance(value, dict) or len(value) > 16:
        raise errors.BadRequest(f"{field} must be an object of at most 16 named ports")
    out: dict[str, int] = {}
    for name in value:
        if not isinstance(name, str) or not NAME.match(name):
            raise errors.BadRequest(f"{field}: invalid port name")
        out[name] = integer(value, name, low=1, high=65535)
    return out


def optional_dict(body: dict[str, Any], field: str, *, max_keys: int = 256) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > max_keys:
        raise errors.BadRequest(f"{field} must be an object of at most {max_keys} keys")
    return value
