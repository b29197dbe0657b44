"""Errors that say whether to retry.

Every error a server returns is one of these, rendered as JSON ``{code, message}`` with the
class's HTTP status; clients turn a response back into the same class with
:func:`from_response`, so callers decide on ``retriable`` rather than on status codes.
"""

from __future__ import annotations

from typing import Any


class DrlabError(Exception):
    code = "internal"
    status = 500
    retriable = False

    def __init__(self, message: str = "", *, code: str | None = None, retry_after_s: float | None = None):
        super().__init__(message or self.code)
        self.message = message or self.code
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class BadRequest(DrlabError):
    code, status = "bad_request", 400


class MalformedBatch(BadRequest):
    code = "malformed_batch"


class TamperedSeal(BadRequest):
    code = "tampered_seal"


class Unauthorized(DrlabError):
    code, status = "unauthorized", 401


class Forbidden(DrlabError):
    code, status = "forbidden", 403


class NotFound(DrlabError):
    code, status = "not_found", 404


class Conflict(DrlabError):
    code, status = "conflict", 409


class StaleGeneration(Conflict):
    code = "stale_generation"


class ChecksumMismatch(Conflict):
    code = "checksum_mismatch"


class TooLarge(DrlabError):
    code, status = "too_large", 413


class Unavailable(DrlabError):
    code, status, retriable = "unavailable", 503, True


class Throttled(DrlabError):
    code, status, retriable = "throttled", 507, True


class TransportError(DrlabError):
    """The peer could not be reached or the connection broke: always worth a retry."""

    code, status, retriable = "transport", 599, True


class ConfigError(DrlabError):
    code = "config"


class StateError(DrlabError):
    """A state file a daemon reads at start is damaged (truncated, not JSON, wrong types): the message
    names the file, what is wrong and what the operator can do. Never retried: the file stays as it is."""

    code = "damaged_state"


_BY_STATUS: dict[int, type[DrlabError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: TooLarge, 503: Unavailable, 507: Throttled,
}
_BY_CODE: dict[str, type[DrlabError]] = {
    cls.code: cls
    for cls in (MalformedBatch, TamperedSeal, StaleGeneration, ChecksumMismatch)
}


def from_response(status: int, body: Any, retry_after: str | None = None) -> DrlabError:
    """Rebuild the error a server sent (status + JSON body)."""
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message", "") if isinstance(body, dict) else str(body)[:200]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = Unavailable if status >= 500 else BadRequest
    retry = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return cls(f"HTTP {status}: {message}", code=code or cls.code, retry_after_s=retry)
