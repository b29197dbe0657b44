"""A component's clock skew from its heartbeat (pure): the component sends its wall clock when
it sent the heartbeat (``time_ns``) and the round trip of its previous heartbeat (``rtt_ns``,
when it has one). The heartbeat took about half that round trip to arrive, so the component's
clock reads ``time_ns + rtt_ns / 2`` when the CS reads ``received_ns``; the skew is the
difference (positive: the component's clock is ahead). Without a round trip the transit time
is simply ignored (it is far below any useful threshold).

The CS stores the skew in the heartbeat's metrics as ``clock_skew_s`` (overwriting whatever the
component put there); cs/health/rules.py ``clock_skew`` raises ``clock_skew`` from it.
"""

from __future__ import annotations

from typing import Any

from common import errors

SKEW_KEY = "clock_skew_s"


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.BadRequest(f"{name} must be a non-negative integer (nanoseconds)")
    return value


def skew_s(sent_ns: int, received_ns: int, rtt_ns: int | None = None) -> float:
    """The component's clock minus the CS's, in seconds (see the module docstring)."""
    return round((sent_ns + (rtt_ns or 0) / 2 - received_ns) / 1e9, 3)


def with_skew(body: dict[str, Any], metrics: dict[str, Any], received_ns: int) -> dict[str, Any]:
    """``metrics`` with ``clock_skew_s`` from the body's ``time_ns`` / ``rtt_ns`` (without it when
    the body has no ``time_ns``). BadRequest for a malformed ``time_ns`` or ``rtt_ns``."""
    sent, rtt = _int_field(body, "time_ns"), _int_field(body, "rtt_ns")
    out = {k: v for k, v in metrics.items() if k != SKEW_KEY}
    if sent is not None:
        out[SKEW_KEY] = skew_s(sent, received_ns, rtt)
    return out
