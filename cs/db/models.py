"""SQLAlchemy 2 models of the CS's system of record.

Times are integers in nanoseconds since the epoch (``*_ns``); ``registered_at`` and
``last_heartbeat`` follow the same unit (kept under the names of the protocol).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value settings of the installation: passphrase-derived key, salt, kdf, settings_version."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"Meta({self.key})"


class Component(Base):
    __tablename__ = "components"
    __table_args__ = (UniqueConstraint("role", "host_id"),)
    component_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))
    ports: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[str] = mapped_column(String(64), default="")
    cert_serial: Mapped[str] = mapped_column(String(64))  # hex: serials exceed 64-bit integers
    registered_at: Mapped[int] = mapped_column(BigInteger)
    last_heartbeat: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        return f"Component({self.component_id}, {self.role}, {self.host_id})"


class Challenge(Base):
    __tablename__ = "challenges"
    challenge_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    server_nonce: Mapped[str] = mapped_column(String(64))  # b64
    role: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[int] = mapped_column(BigInteger)  # ns
    used: Mapped[bool] = mapped_column(Boolean, default=False)

    def __repr__(self) -> str:
        return f"Challenge({self.challenge_id}, {self.role}, {self.host_id}, used={self.used})"


class Disk(Base):
    __tablename__ = "disks"
    __table_args__ = (UniqueConstraint("machine_id", "name"),)
    disk_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    machine_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    ps_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    mt_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    key_b64: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_epoch: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(32), default="unprotected")
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)

    def __repr__(self) -> str:  # never the key
        return f"Disk({self.disk_id}, {self.name}, gen={self.generation}, state={self.state})"


class Job(Base):
    __tablename__ = "jobs"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    disk_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"Job({self.job_id}, {self.kind}, {self.state})"


class Resync(Base):
    """One resync of a disk: one per (disk, generation) started for a reason, with its progress."""

    __tablename__ = "resyncs"
    __table_args__ = (UniqueConstraint("disk_id", "generation"),)
    resync_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    disk_id: Mapped[str] = mapped_column(String(32), index=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # running, done, superseded
    started_ns: Mapped[int] = mapped_column(BigInteger)
    ended_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mode: Mapped[str] = mapped_column(String(16), default="")  # copy | checksum, as the agent reports
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_compared: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)

    def __repr__(self) -> str:
        return f"Resync({self.disk_id}, gen={self.generation}, {self.reason}, {self.state})"


class Verify(Base):
    """An online verify of a disk: requested by an admin, run by the agent, result posted back."""

    __tablename__ = "verifies"
    verify_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    disk_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued, running, succeeded, failed
    block_bytes: Mapped[int] = mapped_column(BigInteger)
    repair: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)  # the one the agent compared under
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def __repr__(self) -> str:
        return f"Verify({self.verify_id}, {self.disk_id}, {self.state})"


class Alert(Base):
    """A health alert raised by a rule of cs/alerts.py: open while ``cleared_ns`` is null. At most one
    open alert per (code, source, disk) — the partial unique index holds it even across CS processes."""

    __tablename__ = "alerts"
    alert_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical
    source_id: Mapped[str] = mapped_column(String(32), index=True)  # the component the condition is about
    disk_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    raised_ns: Mapped[int] = mapped_column(BigInteger)
    cleared_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)

    def __repr__(self) -> str:
        return f"Alert({self.alert_id}, {self.code}, {self.source_id}, disk={self.disk_id}, cleared={self.cleared_ns})"


Index("uq_alerts_open", Alert.code, Alert.source_id, func.coalesce(Alert.disk_id, ""), unique=True,
      sqlite_where=Alert.cleared_ns.is_(None), postgresql_where=Alert.cleared_ns.is_(None))


class ReplicationGroup(Base):
    """Machines whose recovery points must be consistent together (multi-machine bookmarks)."""

    __tablename__ = "replication_groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    machines: Mapped[list[str]] = mapped_column(JSON, default=list)  # agent component ids, sorted
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"ReplicationGroup({self.name}, machines={len(self.machines)})"


class Bookmark(Base):
    """A bookmark run by the CS's two-phase protocol (cs/bookmarks.py) across its member machines.
    ``members``: {machine_id: member record}; every change locks the row (SELECT ... FOR UPDATE)."""

    __tablename__ = "bookmarks"
    bookmark_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tag: Mapped[str] = mapped_column(String(160), unique=True)
    group_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consistency: Mapped[str] = mapped_column(String(16))  # app | crash
    state: Mapped[str] = mapped_column(String(16), index=True)  # preparing, committing, committed, aborted
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    timeout_ms: Mapped[int] = mapped_column(BigInteger)
    created_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    deadline_ns: Mapped[int] = mapped_column(BigInteger)
    decided_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    members: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        return f"Bookmark({self.bookmark_id}, {self.tag}, {self.state})"
