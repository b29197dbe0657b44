"""The model of a process server's upload route and speed (cs/psconfig.py): an HTTP CONNECT proxy
with optional credentials (the password sealed with the account store's key, cs/accounts.py) and a
bandwidth limit with its time-of-day windows. Imported at the end of cs/db/models.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cs.db.models import Base


class PSUplink(Base):
    """One row per PS that has a proxy or a limit; ``proxy_url`` None: direct; ``bytes_per_s`` 0: no
    limit outside the ``windows`` (``[{from, to, bytes_per_s}]``, common/bandwidth.py)."""

    __tablename__ = "ps_uplinks"
    ps_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    proxy_url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    proxy_username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    proxy_password_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_per_s: Mapped[int] = mapped_column(BigInteger, default=0)
    windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"PSUplink({self.ps_id}, proxy={self.proxy_url}, bytes_per_s={self.bytes_per_s})"
