"""Component versions (pure): parsing and ordering semantic versions, and the upgrade order.

Rules:
- a version is ``MAJOR.MINOR.PATCH`` with an optional ``-PRERELEASE`` (dot-separated letters,
  digits and hyphens) and an optional ``+BUILD``; anything else is malformed (:class:`BadRequest`);
- versions compare number by number ("0.2.0" < "0.10.0"); a pre-release sorts before its release
  ("1.0.0-rc.1" < "1.0.0"), numeric pre-release identifiers before alphanumeric ones; build
  metadata is ignored;
- the documented upgrade order is the configuration server first, then every process server,
  then every master target (and the agents with them): a component may never be newer than its
  CS, and an MT should not be newer than any PS.
"""

from __future__ import annotations

import re
from functools import total_ordering

from common import __version__, errors

UPGRADE_ORDER = ("cs", "ps", "mt")
ORDER_TEXT = "upgrade the configuration server first, then the process servers, then the master targets"
MAX_CHARS = 64

_RE = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
                 r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?\Z")


@total_ordering
class Version:
    """A parsed semantic version, ordered as the module docstring says."""

    __slots__ = ("text", "_key")

    def __init__(self, text: str) -> None:
        m = _RE.match(text) if isinstance(text, str) and len(text) <= MAX_CHARS else None
        if m is None:
            raise errors.BadRequest(f"version {text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in m.group(4).split(".")) if m.group(4) else ()
        self.text = text
        self._key = (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: Version) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def parse(text: str) -> Version:
    return Version(text)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as or newer than ``b`` (both must parse)."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def check_not_newer(role: str, version: str, cs_version: str = __version__) -> None:
    """Refuse (409 ``component_newer_than_cs``) a component newer than its configuration server;
    a malformed version is a 400."""
    if Version(version) > Version(cs_version):
        raise errors.Conflict(
            f"this {role} is version {version} but the configuration server is version {cs_version}: a component "
            f"may not be newer than its configuration server; {ORDER_TEXT}", code="component_newer_than_cs")


def advice(cs_version: str, ps_versions: dict[str, str], mt_versions: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{component id: (alert code, message)} for every component out of the upgrade order:
    ``upgrade_order`` for an MT newer than some PS (upgrade that PS next), ``version_mismatch`` for
    a PS or MT whose version differs from the CS's (say which to upgrade next). Malformed
    versions (registered before versions were checked) count as differing."""
    cs = Version(cs_version)
    out: dict[str, tuple[str, str]] = {}
    parsed = {cid: _maybe(v) for group in (ps_versions, mt_versions) for cid, v in group.items()}
    oldest_ps = min((v for cid, v in parsed.items() if cid in ps_versions and v is not None), default=None)
    for role, group in (("ps", ps_versions), ("mt", mt_versions)):
        for cid, text in group.items():
            v = parsed[cid]
            if role == "mt" and v is not None and oldest_ps is not None and v > oldest_ps:
                out[cid] = ("upgrade_order", f"master target version {text} is newer than a process server "
                            f"(version {oldest_ps.text}): upgrade the process servers to {cs_version} next; "
                            f"{ORDER_TEXT}")
            elif v is None or v != cs:
                out[cid] = ("version_mismatch", f"{_NAMES[role]} version {text or '(unknown)'} differs from the "
                            f"configuration server's {cs_version}: {_next(role, ps_versions, cs)}; {ORDER_TEXT}")
    return out


_NAMES = {"ps": "process server", "mt": "master target"}


def _maybe(text: str) -> Version | None:
    try:
        return Version(text)
    except errors.BadRequest:
        return None


def _next(role: str, ps_versions: dict[str, str], cs: Version) -> str:
    """Which to upgrade next: the process servers while any differs from the CS, else this one."""
    if role != "ps" and any(_maybe(v) != cs for v in ps_versions.values()):
        return f"upgrade the process servers to {cs.text} first, then this {_NAMES[role]}"
    return f"upgrade this {_NAMES[role]} to {cs.text} next"
