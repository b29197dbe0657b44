"""Models of the on-prem inventory: hypervisors a PS discovers, and the machines it found on them
(cs/hypervisors.py). Imported at the end of cs/db/models.py, so metadata and migrations see them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cs.db.models import Base


class Hypervisor(Base):
    """A hypervisor manager (vCenter-like) discovered by one PS with an account of the account store.
    ``fingerprint``: sha256 hex of its TLS certificate, pinned at the first discovery when not given;
    ``discover_seq``: bumped by "discover now" (the PS discovers when it changes)."""

    __tablename__ = "hypervisors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    account: Mapped[str] = mapped_column(String(64))
    ps_id: Mapped[str] = mapped_column(String(32), index=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    discover_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_discovery_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"Hypervisor({self.name}, {self.address}:{self.port}, ps={self.ps_id})"


class DiscoveredMachine(Base):
    """A VM a discovery found on a hypervisor; a discovery report replaces the hypervisor's rows."""

    __tablename__ = "discovered_machines"
    hypervisor: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm: Mapped[str] = mapped_column(String(255), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(255), index=True)
    address: Mapped[str] = mapped_column(String(255))
    os: Mapped[str] = mapped_column(String(32))
    power_state: Mapped[str] = mapped_column(String(16))
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    agent_installed: Mapped[bool] = mapped_column(Boolean, default=False)
    seen_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"DiscoveredMachine({self.hypervisor}/{self.vm}, {self.host_id})"
