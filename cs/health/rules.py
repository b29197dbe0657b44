"""The health rules (pure): what one component's last heartbeat, its silence and its disks' RPO
say at ``now_ns``, as :class:`Observation` s — one per (code, disk), with the levels (warning,
critical) that hold now and how long each must hold before it raises (cs/health/windows.py).

A rule returns None when its inputs do not say (an older component's metrics, or metrics of a
component silent past its heartbeat timeout): then its codes change nothing. Otherwise every
(code, disk) it owns and does not observe holding is clear.

| code | source | levels |
|---|---|---|
| ``ps_cpu``, ``ps_memory`` | PS | warning / critical above a percentage, for a window |
| ``ps_cache_free`` | PS | warning / critical under a free percentage, for a window |
| ``ps_upload_backlog`` | PS | warning / critical when the oldest batch not uploaded is older |
| ``ps_throttled`` | PS | critical (whole cache) / warning (one disk), at once |
| ``806`` / ``78022`` / ``78174`` | PS / MT / agent | critical: no heartbeat for the timeout |
| ``78186`` | agent, per disk | critical: its PS unreachable for ``ps_unreachable_after_s`` |
| ``78028`` | agent, per disk | critical: uploads refused for ``upload_failures_after_s`` |
| ``78188`` | agent, per disk and machine | warning: churn above the supported rate, for a window |
| ``rpo_exceeded`` | agent, per disk | warning: RPO above the disk's threshold |
| ``retention_low_space`` | MT, per disk | warning: retention volume low; critical: applying paused |
| ``mt_apply_failing`` | MT, per disk | warning: its last ``APPLY_FAILURES_WARNING`` (3) or more applies failed |
| ``mt_apply_stopped`` | MT, per disk | critical: applying stopped until the MT restarts (the reason) |
| ``ps_services_not_running`` | PS | warning: one of its internal services stopped, at once |
| ``clock_skew`` | PS / MT / agent | warning: its clock differs from the CS's by more than the threshold |
| ``ps_upload_proxy`` | PS | critical: its upload proxy refuses it (wrong credentials, unreachable), at once |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.config import HealthConfig

WARNING, CRITICAL = "warning", "critical"
RANK = {"ok": 0, WARNING: 1, CRITICAL: 2}

PS_THROTTLED = "ps_throttled"
PS_CPU = "ps_cpu"
PS_MEMORY = "ps_memory"
PS_CACHE_FREE = "ps_cache_free"
PS_BACKLOG = "ps_upload_backlog"
PS_SILENT = "806"
MT_SILENT = "78022"
AGENT_SILENT = "78174"
PS_UNREACHABLE = "78186"
UPLOAD_FAILURES = "78028"
HIGH_CHURN = "78188"
RPO_EXCEEDED = "rpo_exceeded"
RETENTION_LOW_SPACE = "retention_low_space"
MT_APPLY_FAILING, MT_APPLY_STOPPED = "mt_apply_failing", "mt_apply_stopped"
APPLY_FAILURES_WARNING = 3  # mt_apply_failing: consecutive failed applies of one disk
PS_SERVICES = "ps_services_not_running"
CLOCK_SKEW = "clock_skew"
PS_PROXY = "ps_upload_proxy"

_DISK_ID = re.compile(r"^[0-9a-f]{32}\Z")
NS = 1_000_000_000


@dataclass(frozen=True)
class Level:
    severity: str
    holds: bool
    window_ns: int


@dataclass(frozen=True)
class Observation:
    """One (code, disk) of a source as a rule sees it now."""

    code: str
    disk_id: str | None
    levels: tuple[Level, ...]  # weakest first
    message: str

    @property
    def key(self) -> tuple[str, str | None]:
        return self.code, self.disk_id


@dataclass(frozen=True)
class DiskRpo:
    """A disk of a machine: the source time up to which its MT durably holds it, and its threshold."""

    disk_id: str
    point_ns: int
    threshold_s: float


@dataclass(frozen=True)
class Subject:
    """What the rules know about one component at ``now_ns``."""

    role: str
    metrics: dict[str, Any]
    registered_ns: int
    last_heartbeat_ns: int | None
    now_ns: int
    rpo: tuple[DiskRpo, ...] | None = None  # agents, from the periodic evaluator only

    @property
    def silent_s(self) -> float:
        return (self.now_ns - (self.last_heartbeat_ns or self.registered_ns)) / NS

    @property
    def sample_age_s(self) -> float:
        """How old the metrics are (a value measured then has aged this much since)."""
        return max(0.0, (self.now_ns - (self.last_heartbeat_ns or self.now_ns)) / NS)


@dataclass(frozen=True)
class Verdict:
    """The codes some rule said something about, and what it observed holding or not."""

    codes: frozenset[str]
    observations: tuple[Observation, ...]


Rule = Callable[[HealthConfig, Subject], list[Observation] | None]


def _ns(seconds: float) -> int:
    return int(seconds * NS)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _levels(warn: bool, crit: bool, window_s: float) -> tuple[Level, ...]:
    return Level(WARNING, warn or crit, _ns(window_s)), Level(CRITICAL, crit, _ns(window_s))


# -- the process server ----------------------------------------------------------------------


def ps_host(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    host = s.metrics.get("host")
    if not isinstance(host, dict):
        return None
    out = []
    for code, field, what in ((PS_CPU, "cpu", "CPU"), (PS_MEMORY, "memory", "memory")):
        value = _num(host.get(f"{field if field == 'cpu' else 'mem'}_pct"))
        if value is None:
            continue
        warn, crit = getattr(cfg, f"ps_{field}_warning_pct"), getattr(cfg, f"ps_{field}_critical_pct")
        window = getattr(cfg, f"ps_{field}_window_s")
        out.append(Observation(code, None, _levels(value > warn, value > crit, window),
                               f"process server {what} at {value:.1f} % (warning above {_fmt(warn)} %, "
                               f"critical above {_fmt(crit)} %, for {_fmt(window)} s)"))
    return out


def ps_cache(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    free = _num(s.metrics.get("cache_free_pct"))
    if free is None:
        return None
    warn, crit = cfg.ps_cache_free_warning_pct, cfg.ps_cache_free_critical_pct
    return [Observation(PS_CACHE_FREE, None, _levels(free < warn, free < crit, cfg.ps_cache_free_window_s),
                        f"process server cache {free:.1f} % free (warning under {_fmt(warn)} %, critical under "
                        f"{_fmt(crit)} %, for {_fmt(cfg.ps_cache_free_window_s)} s)")]


def ps_backlog(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    age = _num(s.metrics.get("upload_backlog_age_s"))
    if age is None:
        return None
    if age > 0:
        age += s.sample_age_s  # the oldest batch was that old at the heartbeat, and still waits
    warn, crit = cfg.ps_backlog_age_warning_s, cfg.ps_backlog_age_critical_s
    return [Observation(PS_BACKLOG, None, _levels(age > warn, age > crit, cfg.ps_backlog_window_s),
                        f"the oldest batch not yet uploaded to the master target is {age:.0f} s old "
                        f"(warning above {_fmt(warn)} s, critical above {_fmt(crit)} s)")]


def ps_throttle(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    throttle = s.metrics.get("throttle")
    if not isinstance(throttle, dict) or not isinstance(throttle.get("active"), bool):
        return None
    out = [Observation(PS_THROTTLED, None, (Level(CRITICAL, throttle["active"], 0),),
                       f"the process server throttles every disk ({throttle.get('reason', '?')}): cache "
                       f"{_fmt(throttle.get('free_pct'))} % free, under {_fmt(throttle.get('threshold_pct'))} %")]
    disks = s.metrics.get("disks")
    for disk_id, disk in (disks.items() if isinstance(disks, dict) else ()):
        state = disk.get("throttle") if isinstance(disk, dict) else None
        if _DISK_ID.match(str(disk_id)) and isinstance(state, dict) and state.get("active") is True:
            out.append(Observation(PS_THROTTLED, str(disk_id), (Level(WARNING, True, 0),),
                                   f"the process server throttles disk {disk_id} ({state.get('reason', '?')}): "
                                   f"{_fmt(disk.get('backlog_bytes'))} bytes not yet at the master target"))
    return out


def ps_services(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    """``services`` ({name: running | stopped}, ps/health.py): a warning naming those not running."""
    services = s.metrics.get("services")
    if not isinstance(services, dict) or not services:
        return None  # an older PS
    stopped = sorted(str(name) for name, state in services.items() if state != "running")
    return [Observation(PS_SERVICES, None, (Level(WARNING, bool(stopped), 0),),
                        f"services not running on the process server: {', '.join(stopped) or 'none'}")]


def ps_proxy(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    """``uplink.proxy_error`` (ps/uplink.py): uploads stall at the proxy until it is fixed."""
    up = s.metrics.get("uplink")
    if not isinstance(up, dict) or "proxy_error" not in up:
        return None  # an older PS
    error = up.get("proxy_error")
    return [Observation(PS_PROXY, None, (Level(CRITICAL, bool(error), 0),),
                        f"uploads to the master targets fail at the proxy {up.get('proxy')}: {str(error)[:200]}")]


# -- every component -------------------------------------------------------------------------


def clock_skew(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    """``clock_skew_s`` (the CS measures it from the heartbeat, cs/health/clock.py) beyond the threshold."""
    skew = _num(s.metrics.get("clock_skew_s"))
    if skew is None:
        return None  # a component that does not send its clock
    limit = cfg.clock_skew_threshold_s
    side = "ahead of" if skew > 0 else "behind"
    return [Observation(CLOCK_SKEW, None, (Level(WARNING, abs(skew) > limit, 0),),
                        f"the {s.role}'s clock is {abs(skew):.0f} s {side} the configuration server's "
                        f"(alert above {_fmt(limit)} s): synchronize its time")]


# -- silence ---------------------------------------------------------------------------------

SILENT = {"ps": (PS_SILENT, "ps_heartbeat_timeout_s", "process server"),
          "mt": (MT_SILENT, "mt_heartbeat_timeout_s", "master target"),
          "agent": (AGENT_SILENT, "agent_heartbeat_timeout_s", "machine (agent)")}


def heartbeat_timeout_s(cfg: HealthConfig, role: str) -> float:
    return float(getattr(cfg, SILENT[role][1])) if role in SILENT else float("inf")


def silence(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    code, _, what = SILENT[s.role]
    timeout = heartbeat_timeout_s(cfg, s.role)
    silent = s.silent_s
    return [Observation(code, None, (Level(CRITICAL, silent >= timeout, 0),),
                        f"no heartbeat from the {what} for {silent:.0f} s (timeout {_fmt(timeout)} s)")]


# -- the agent -------------------------------------------------------------------------------


def _agent_disks(s: Subject) -> list[tuple[str, dict[str, Any]]]:
    disks = s.metrics.get("disks")
    out = []
    for disk in (disks.values() if isinstance(disks, dict) else ()):
        if isinstance(disk, dict) and _DISK_ID.match(str(disk.get("disk_id", ""))):
            out.append((str(disk["disk_id"]), disk))
    return out


def agent_link(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    disks = _agent_disks(s)
    if not any("ps_unreachable_s" in d for _, d in disks):
        return None  # an agent that does not report it
    out = []
    for disk_id, d in disks:
        for code, field, limit, what in (
                (PS_UNREACHABLE, "ps_unreachable_s", cfg.ps_unreachable_after_s, "cannot reach its process server"),
                (UPLOAD_FAILURES, "upload_failing_s", cfg.upload_failures_after_s,
                 "has its uploads to the process server refused")):
            failing = _num(d.get(field)) or 0.0
            if failing > 0:
                failing += s.sample_age_s
            out.append(Observation(code, disk_id, (Level(CRITICAL, failing > 0 and failing >= limit, 0),),
                                   f"the machine {what} for disk {disk_id} since {failing:.0f} s "
                                   f"(alert after {_fmt(limit)} s; last error {d.get('last_error') or '?'})"))
    return out


def agent_churn(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    total = _num(s.metrics.get("churn_bytes_per_s"))
    if total is None:
        return None
    window = cfg.churn_window_s
    limit = cfg.churn_machine_max_bytes_per_s
    out = [Observation(HIGH_CHURN, None, (Level(WARNING, total > limit, _ns(window)),),
                       f"the machine's churn is {total / 1e6:.1f} MB/s, above the supported "
                       f"{limit / 1e6:g} MB/s (for {_fmt(window)} s)")]
    for disk_id, d in _agent_disks(s):
        rate = _num(d.get("churn_bytes_per_s"))
        if rate is not None:
            disk_limit = cfg.churn_disk_max_bytes_per_s
            out.append(Observation(HIGH_CHURN, disk_id, (Level(WARNING, rate > disk_limit, _ns(window)),),
                                   f"disk {disk_id} churns {rate / 1e6:.1f} MB/s, above the supported "
                                   f"{disk_limit / 1e6:g} MB/s (for {_fmt(window)} s)"))
    return out


def agent_rpo(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    if s.rpo is None:
        return None
    out = []
    for d in s.rpo:
        rpo_s = max(0.0, (s.now_ns - d.point_ns) / NS)
        out.append(Observation(RPO_EXCEEDED, d.disk_id, (Level(WARNING, rpo_s > d.threshold_s, _ns(cfg.rpo_window_s)),),
                               f"disk {d.disk_id}: RPO {rpo_s:.0f} s, above the policy's threshold "
                               f"{_fmt(d.threshold_s)} s"))
    return out


# -- the master target -----------------------------------------------------------------------


def mt_retention(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    """Per disk from ``disks.{id}.retention`` (mt/pruner.py): low space is a warning, a disk whose
    applying paused for it critical; both clear at once when space returns."""
    disks = s.metrics.get("disks")
    if not isinstance(disks, dict) or not any(isinstance(d, dict) and "retention" in d for d in disks.values()):
        return None  # an older MT
    out = []
    for disk_id, d in disks.items():
        ret = d.get("retention") if isinstance(d, dict) else None
        if not _DISK_ID.match(str(disk_id)) or not isinstance(ret, dict) or not ret:
            continue
        paused, low = ret.get("paused") is True, ret.get("low_space") is True
        total, free = _num(ret.get("total_bytes")) or 0.0, _num(ret.get("free_bytes")) or 0.0
        pct = 100.0 * free / total if total else 0.0
        what = "applying is paused (policy: pause)" if paused else "the oldest recovery points are pruned"
        out.append(Observation(RETENTION_LOW_SPACE, str(disk_id), (Level(WARNING, low or paused, 0),
                                                                   Level(CRITICAL, paused, 0)),
                               f"the master target's retention volume is low for disk {disk_id} "
                               f"({pct:.1f} % free): {what}"))
    return out


def mt_apply(cfg: HealthConfig, s: Subject) -> list[Observation] | None:
    """Per disk from ``disks.{id}.apply_failures`` (consecutive, mt/worker.py; back to 0 at the next
    applied batch) and ``apply_stopped`` (mt/apply.py: a reason, None after a restart). At once."""
    disks = s.metrics.get("disks")
    if not isinstance(disks, dict) or not any(isinstance(d, dict) and "apply_failures" in d for d in disks.values()):
        return None  # an older MT
    out = []
    for disk_id, d in disks.items():
        failures = _num(d.get("apply_failures")) if isinstance(d, dict) else None
        if not _DISK_ID.match(str(disk_id)) or failures is None:
            continue
        stopped = d.get("apply_stopped") if isinstance(d.get("apply_stopped"), str) else ""
        out.append(Observation(MT_APPLY_FAILING, str(disk_id), (Level(WARNING, failures >= APPLY_FAILURES_WARNING, 0),),
                               f"the master target failed to apply disk {disk_id} {failures:.0f} times in a row "
                               f"(alert at {APPLY_FAILURES_WARNING}): it retries; see its log (apply_failed)"))
        out.append(Observation(MT_APPLY_STOPPED, str(disk_id), (Level(CRITICAL, bool(stopped), 0),),
                               f"the master target stopped applying disk {disk_id}: {stopped[:200]}; "
                               f"restart the master target (it recovers the disk at start)"))
    return out


# -- by role ---------------------------------------------------------------------------------

MetricRules = dict[str, tuple[tuple[frozenset[str], Rule], ...]]
METRIC_RULES: MetricRules = {
    "ps": ((frozenset({PS_THROTTLED}), ps_throttle), (frozenset({PS_CPU, PS_MEMORY}), ps_host),
           (frozenset({PS_CACHE_FREE}), ps_cache), (frozenset({PS_BACKLOG}), ps_backlog),
           (frozenset({PS_SERVICES}), ps_services), (frozenset({CLOCK_SKEW}), clock_skew),
           (frozenset({PS_PROXY}), ps_proxy)),
    "mt": ((frozenset({RETENTION_LOW_SPACE}), mt_retention), (frozenset({CLOCK_SKEW}), clock_skew),
           (frozenset({MT_APPLY_FAILING, MT_APPLY_STOPPED}), mt_apply)),
    "agent": ((frozenset({PS_UNREACHABLE, UPLOAD_FAILURES}), agent_link), (frozenset({HIGH_CHURN}), agent_churn),
              (frozenset({CLOCK_SKEW}), clock_skew)),
}


def evaluate(cfg: HealthConfig, s: Subject) -> Verdict:
    """Every rule of the subject's role; metric rules only while its heartbeat is fresh."""
    codes: set[str] = set()
    seen: list[Observation] = []
    rules: list[tuple[frozenset[str], Rule]] = []
    if s.role in SILENT:
        rules.append((frozenset({SILENT[s.role][0]}), silence))
    fresh = s.last_heartbeat_ns is not None and s.silent_s < heartbeat_timeout_s(cfg, s.role)
    if fresh:
        rules.extend(METRIC_RULES.get(s.role, ()))
    if s.role == "agent":
        rules.append((frozenset({RPO_EXCEEDED}), agent_rpo))
    for owned, rule in rules:
        found = rule(cfg, s)
        if found is not None:
            codes |= owned
            seen.extend(found)
    return Verdict(frozenset(codes), tuple(seen))
