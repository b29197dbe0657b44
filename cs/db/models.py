"""SQLAlchemy 2 models of the CS's system of record.

Times are integers in nanoseconds since the epoch (``*_ns``); ``registered_at`` and
``last_heartbeat`` follow the same unit (kept under the names of the protocol).

This module holds the declarative ``Base`` and the core models (components, disks, jobs, alerts,
bookmarks, sites, policies, machines ...); the rest register on the same ``Base.metadata`` from
their own modules, imported at the end of this one so metadata and migrations see every table:
cs/db/models_access.py (challenges, enrollment tokens, certificates, operators and their sessions,
push-install accounts, the audit log), cs/db/inventory.py and cs/db/psuplink.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Row ids that only grow (alerts, events, audit rows): 64-bit on PostgreSQL (BIGSERIAL); on SQLite an
# INTEGER PRIMARY KEY is already the 64-bit rowid (and only that spelling autoincrements).
SERIAL64 = BigInteger().with_variant(Integer(), "sqlite")


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
    site_name: Mapped[str | None] = mapped_column(String(64), nullable=True)  # cs/sites.py

    def __repr__(self) -> str:
        return f"Component({self.component_id}, {self.role}, {self.host_id})"


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
    key_b64: Mapped[str | None] = mapped_column(String(128), nullable=True)  # sealed (cs/diskkeys.py)
    key_epoch: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(32), default="unprotected")
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # an existing disk the MT adopts as the replica (a seed, cs/targets.py), else None
    replica_path: Mapped[str | None] = mapped_column(String(4096), nullable=True)

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
    # the CS job runner (cs/runner.py): steps [{name, at_ns, percent?, detail?}], overall percent,
    # times, and the lease of the CS process running it (re-claimed by another once it expires)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    started_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ended_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

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
    alert_id: Mapped[int] = mapped_column(SERIAL64, primary_key=True, autoincrement=True)
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
    policy_name: Mapped[str | None] = mapped_column(String(64), nullable=True)  # cs/policies.py
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


class DiskDrain(Base):
    """A PS a disk moved away from (a PS switch) that still uploads what it cached: its settings
    list the disk as draining and the MT takes the disk's batches from it, until the switch job
    drops the row (then the old PS is fenced: its settings no longer name the disk)."""

    __tablename__ = "disk_drains"
    disk_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ps_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(BigInteger)
    since_version: Mapped[int] = mapped_column(BigInteger)  # the settings version that started the drain
    created_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"DiskDrain({self.disk_id}, ps={self.ps_id}, gen={self.generation})"


class HealthWindow(Base):
    """Since when a health condition has held (cs/health/): one row per (source, code, disk, level).
    A condition raises its alert once it has held for its whole window; the row goes when it stops
    holding. In the database, so windows survive a CS restart and two CS processes share them."""

    __tablename__ = "health_windows"
    __table_args__ = (UniqueConstraint("source_id", "code", "disk_key", "severity"),)
    window_id: Mapped[int] = mapped_column(SERIAL64, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(32), index=True)
    code: Mapped[str] = mapped_column(String(32))
    disk_key: Mapped[str] = mapped_column(String(32), default="")  # the disk id, "" for none
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical
    since_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"HealthWindow({self.source_id}, {self.code}, disk={self.disk_key or '-'}, {self.severity})"


class AlertEvent(Base):
    """The webhook outbox (cs/webhook.py): one row per alert raised or cleared while a webhook is
    configured, delivered in order with retries; ``delivered_ns`` set once the receiver took it."""

    __tablename__ = "alert_events"
    event_id: Mapped[int] = mapped_column(SERIAL64, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(BigInteger, index=True)
    event: Mapped[str] = mapped_column(String(16))  # raised | cleared
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    delivered_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_until_ns: Mapped[int] = mapped_column(BigInteger, default=0)  # a CS process is sending it
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def __repr__(self) -> str:
        return f"AlertEvent({self.event_id}, {self.event}, alert={self.alert_id}, delivered={self.delivered_ns})"


class Site(Base):
    """A site (cs/sites.py): ``on-prem`` (protected machines, process servers) or ``cloud`` (master
    targets, recovered machines). Components carry ``site_name``; machines too (``machines``)."""

    __tablename__ = "sites"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # on-prem | cloud
    description: Mapped[str] = mapped_column(Text, default="")
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"Site({self.name}, {self.kind})"


class Policy(Base):
    """A replication policy (cs/policies.py); ``default`` is created at init and used by protect."""

    __tablename__ = "policies"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rpo_threshold_s: Mapped[int] = mapped_column(BigInteger)
    retention_window_s: Mapped[int] = mapped_column(BigInteger)
    app_consistent_interval_s: Mapped[int] = mapped_column(BigInteger)  # 0: no app-consistent points
    crash_consistent_interval_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    multi_machine_consistency: Mapped[bool] = mapped_column(Boolean, default=False)
    # what the MT does when its retention volume runs low: "prune" (oldest points) or "pause"
    low_space_action: Mapped[str] = mapped_column(String(16), default="prune", server_default="prune")
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"Policy({self.name}, rpo={self.rpo_threshold_s}s)"


class Machine(Base):
    """A machine (cs/protection.py); ``machine_id`` is its agent's component id. It is also the
    protected item: ``policy_name`` and ``protection_state`` (ARCHITECTURE.md §6) while protected."""

    __tablename__ = "machines"
    machine_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    site_name: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    policy_name: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    protection_state: Mapped[str] = mapped_column(String(32), default="unprotected")
    protected_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"Machine({self.machine_id}, {self.name}, {self.protection_state})"


class RecoveryPlan(Base):
    """A recovery plan (cs/plans.py): ordered groups of machines, each with pre/post actions."""

    __tablename__ = "recovery_plans"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    groups: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"RecoveryPlan({self.name}, groups={len(self.groups or [])})"


from cs.db import inventory as _inventory  # noqa: E402,F401  (hypervisors, discovered machines: cs/db/inventory.py)
from cs.db import models_access as _models_access  # noqa: E402,F401  (challenges, tokens, certificates, operators ...)
from cs.db import psuplink as _psuplink  # noqa: E402,F401  (a PS's upload proxy and bandwidth)
