"""The health rules and windows alone (pure): every row of the table of ARCHITECTURE.md §5 raises
after its window and clears, a spike shorter than its window raises nothing, silence raises
806 / 78022 / 78174, RPO per disk; and the /proc parsing the PS reports its load with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common import hoststats
from common.config import ConfigError, HealthConfig
from cs.health import rules, windows

S = 10**9
T0 = 1_800_000_000 * S
DISK1, DISK2 = "a1" * 16, "b2" * 16


@dataclass
class Sim:
    """One component's windows and open alerts, moved by successive evaluations (as engine.py does)."""

    role: str
    cfg: HealthConfig = field(default_factory=HealthConfig)
    since: dict[windows.LevelKey, int] = field(default_factory=dict)
    open: dict[windows.Key, str] = field(default_factory=dict)
    log: list[tuple[str, str, str | None, str]] = field(default_factory=list)

    def at(self, t_s: float, metrics: dict[str, Any] | None = None, *, heartbeat_s: float | None = None,
           rpo: tuple[rules.DiskRpo, ...] | None = None) -> dict[windows.Key, str]:
        now = T0 + int(t_s * S)
        last = T0 + int((t_s if heartbeat_s is None else heartbeat_s) * S)
        verdict = rules.evaluate(self.cfg, rules.Subject(self.role, metrics or {}, T0, last, now, rpo))
        plan = windows.track(self.since, verdict, now)
        added, dropped = windows.window_changes(self.since, plan, verdict.codes)
        for k in dropped:
            del self.since[k]
        self.since.update(added)
        decision = windows.decide(self.open, plan, verdict.codes)
        for key in decision.to_clear:
            self.log.append(("cleared", key[0], key[1], self.open.pop(key)))
        for c in decision.to_raise:
            self.open[c.key] = c.severity
            self.log.append(("raised", c.code, c.disk_id, c.severity))
        return dict(self.open)


def ps(cpu: float = 10.0, mem: float = 20.0, free: float = 90.0, backlog_s: float = 0.0) -> dict[str, Any]:
    return {"host": {"cpu_pct": cpu, "mem_pct": mem}, "cache_free_pct": free, "upload_backlog_age_s": backlog_s,
            "throttle": {"active": False}, "disks": {}}


@pytest.mark.parametrize(("field", "code"), [("cpu", rules.PS_CPU), ("mem", rules.PS_MEMORY)])
def test_ps_cpu_and_memory_warn_then_critical_after_15_minutes_and_clear(field: str, code: str) -> None:
    sim = Sim("ps")
    k = (code, None)
    for t in range(0, 900, 30):  # 85 % for just under 15 minutes: nothing yet
        assert k not in sim.at(t, ps(**{field: 85.0}))
    assert sim.at(900, ps(**{field: 85.0}))[k] == "warning"
    for t in range(930, 1800, 30):  # above 95 % now: still a warning until that held 15 minutes
        assert sim.at(t, ps(**{field: 97.0}))[k] == "warning"
    assert sim.at(1830, ps(**{field: 97.0}))[k] == "critical"
    assert sim.at(1860, ps(**{field: 90.0}))[k] == "warning"  # back under 95: the warning has held all along
    assert k not in sim.at(1890, ps(**{field: 50.0}))
    assert [e[0] for e in sim.log] == ["raised", "cleared", "raised", "cleared", "raised", "cleared"]


def test_a_spike_shorter_than_the_window_raises_nothing() -> None:
    sim = Sim("ps")
    for t in range(0, 3600, 30):  # 14 minutes at 99 %, one calm sample, again and again
        calm = t % 870 == 0
        assert sim.at(t, ps(cpu=20.0 if calm else 99.0, mem=20.0 if calm else 99.0, free=90.0 if calm else 5.0)) == {}
    assert sim.log == []


def test_cache_free_space_and_backlog_age() -> None:
    sim = Sim("ps")
    assert sim.at(0, ps(free=28.0)) == {}
    assert sim.at(900, ps(free=28.0)) == {(rules.PS_CACHE_FREE, None): "warning"}
    sim.at(960, ps(free=22.0))
    assert sim.at(1860, ps(free=22.0))[(rules.PS_CACHE_FREE, None)] == "critical"
    assert sim.at(1890, ps(free=40.0)) == {}
    # the backlog's age needs no window: it is a duration already
    assert sim.at(2000, ps(backlog_s=1700.0)) == {}
    assert sim.at(2010, ps(backlog_s=1810.0)) == {(rules.PS_BACKLOG, None): "warning"}
    # between heartbeats the evaluator ages the last reported age: 2600 s + 200 s > 45 min
    assert sim.at(2210, ps(backlog_s=2600.0), heartbeat_s=2010)[(rules.PS_BACKLOG, None)] == "critical"
    assert sim.at(2220, ps(backlog_s=0.0)) == {}


def test_every_threshold_and_window_is_configurable() -> None:
    cfg = HealthConfig(ps_cpu_warning_pct=50, ps_cpu_critical_pct=60, ps_cpu_window_s=2.0)
    sim = Sim("ps", cfg)
    assert sim.at(0, ps(cpu=55)) == {}
    assert sim.at(2, ps(cpu=55)) == {(rules.PS_CPU, None): "warning"}
    with pytest.raises(ConfigError):
        HealthConfig(ps_cpu_warning_pct=90, ps_cpu_critical_pct=80)
    with pytest.raises(ConfigError):
        HealthConfig(ps_cache_free_warning_pct=20, ps_cache_free_critical_pct=25)
    with pytest.raises(ConfigError):
        HealthConfig(churn_window_s=-1.0)
    with pytest.raises(ConfigError) as err:
        HealthConfig(webhook_url="http://user:secret@example.test/hook")
    assert "secret" not in str(err.value)
    assert "secret" not in repr(HealthConfig(webhook_url="https://user:secret@example.test/hook"))


@pytest.mark.parametrize(("role", "code"), [("ps", "806"), ("mt", "78022"), ("agent", "78174")])
def test_silence_raises_its_code_and_a_heartbeat_clears_it(role: str, code: str) -> None:
    sim = Sim(role)
    assert sim.at(899, heartbeat_s=0) == {}
    assert sim.at(900, heartbeat_s=0) == {(code, None): "critical"}
    assert sim.at(901) == {}  # a heartbeat now


def test_metric_rules_say_nothing_for_a_silent_component() -> None:
    sim = Sim("ps", HealthConfig(ps_cpu_window_s=0))
    assert sim.at(0, ps(cpu=99)) == {(rules.PS_CPU, None): "critical"}
    # silent: its last metrics are stale — the CPU alert stays as it was, 806 joins it
    assert sim.at(1000, ps(cpu=10), heartbeat_s=0) == {(rules.PS_CPU, None): "critical", ("806", None): "critical"}
    assert sim.at(1001, ps(cpu=10)) == {}


def agent(disks: dict[str, dict[str, Any]], churn: float = 0.0) -> dict[str, Any]:
    return {"churn_bytes_per_s": churn,
            "disks": {f"disk{i}": {"disk_id": d, "ps_unreachable_s": 0.0, "upload_failing_s": 0.0,
                                   "churn_bytes_per_s": 0.0, **v} for i, (d, v) in enumerate(disks.items())}}


def test_agent_link_failures_raise_78186_and_78028_per_disk() -> None:
    sim = Sim("agent")
    assert sim.at(0, agent({DISK1: {"ps_unreachable_s": 299.0, "last_error": "transport"}, DISK2: {}})) == {}
    assert sim.at(1, agent({DISK1: {"ps_unreachable_s": 300.0}, DISK2: {"upload_failing_s": 301.0}})) == {
        ("78186", DISK1): "critical", ("78028", DISK2): "critical"}
    # between heartbeats the failure keeps ageing
    sim2 = Sim("agent")
    assert sim2.at(200, agent({DISK1: {"ps_unreachable_s": 150.0}}), heartbeat_s=0) == {("78186", DISK1): "critical"}
    assert sim.at(2, agent({DISK1: {}, DISK2: {}})) == {}
    assert Sim("agent").at(0, {"disks": {}}) == {}  # an agent that does not report it: nothing


def test_churn_above_the_supported_rate_for_its_window() -> None:
    sim = Sim("agent", HealthConfig(churn_window_s=60))
    high = agent({DISK1: {"churn_bytes_per_s": 25e6}, DISK2: {"churn_bytes_per_s": 30e6}}, churn=55e6)
    assert sim.at(0, high) == {}
    assert sim.at(60, high) == {("78188", None): "warning", ("78188", DISK1): "warning", ("78188", DISK2): "warning"}
    assert sim.at(90, agent({DISK1: {"churn_bytes_per_s": 25e6}}, churn=25e6)) == {("78188", DISK1): "warning"}
    assert sim.at(100, agent({DISK1: {}}, churn=1e6)) == {}


def test_rpo_above_the_policy_threshold_per_disk() -> None:
    sim = Sim("agent")

    def rpo(age1: float, age2: float) -> tuple[rules.DiskRpo, ...]:
        return (rules.DiskRpo(DISK1, T0 - int(age1 * S), 60.0), rules.DiskRpo(DISK2, T0 - int(age2 * S), 900.0))
    assert sim.at(0, rpo=rpo(30, 30)) == {}
    assert sim.at(0, rpo=rpo(61, 600)) == {(rules.RPO_EXCEEDED, DISK1): "warning"}
    both = {(rules.RPO_EXCEEDED, DISK1): "warning", (rules.RPO_EXCEEDED, DISK2): "warning"}
    assert sim.at(0, rpo=rpo(61, 901)) == both
    assert sim.at(1, rpo=None) == both  # the heartbeat path does not compute RPO: nothing changes
    assert sim.at(2, rpo=rpo(1, 1)) == {}


def test_health_is_the_worst_open_alert() -> None:
    assert windows.worst([]) == "ok"
    assert windows.worst(["warning"]) == "warning"
    assert windows.worst(["warning", "critical", "warning"]) == "critical"


def test_proc_parsing(tmp_path: Path) -> None:
    stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n"
    assert hoststats.cpu_times(stat) == (200, 1000)
    sampler = hoststats.CpuSampler()
    sampler.feed((200, 1000))
    assert sampler.feed((290, 1100)) == 90.0
    assert hoststats.mem_pct("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n") == 75.0
    assert hoststats.mem_pct("garbage") is None
    (tmp_path / "stat").write_text(stat)
    (tmp_path / "meminfo").write_text("MemTotal: 400 kB\nMemAvailable: 100 kB\n")
    assert hoststats.CpuSampler().sample(tmp_path) == 20.0 and hoststats.read_mem_pct(tmp_path) == 75.0
    assert hoststats.read_mem_pct(tmp_path / "none") is None
    real = hoststats.CpuSampler()
    real.sample()
    value = real.sample()
    assert value is None or 0.0 <= value <= 100.0
    meter = hoststats.RateMeter()
    assert meter.rate("d", 100, now=1.0) == 0.0 and meter.rate("d", 1100, now=3.0) == 500.0


def mt_metrics(**disks: dict[str, Any]) -> dict[str, Any]:
    """MT heartbeat metrics whose disks report ``retention`` (mt/pruner.py)."""
    return {"disks": {d: {"mt_applied": 1, "retention": {"paused": False, "low_space": False, "action": "prune",
                                                         "free_bytes": 900, "total_bytes": 1000, **r}}
                      for d, r in disks.items()}}


def test_retention_low_space_warns_when_pruning_is_critical_when_paused_and_clears() -> None:
    sim = Sim("mt")
    assert sim.at(0, mt_metrics(**{DISK1: {}, DISK2: {}})) == {}
    low = mt_metrics(**{DISK1: {"low_space": True, "free_bytes": 50}, DISK2: {}})
    assert sim.at(1, low) == {("retention_low_space", DISK1): "warning"}
    paused = mt_metrics(**{DISK1: {"low_space": True, "paused": True, "action": "pause", "free_bytes": 50}, DISK2: {}})
    assert sim.at(2, paused) == {("retention_low_space", DISK1): "critical"}
    assert sim.at(3, mt_metrics(**{DISK1: {}, DISK2: {}})) == {}  # space returned
    assert sim.log[-1] == ("cleared", "retention_low_space", DISK1, "critical")
    verdict = rules.evaluate(HealthConfig(), rules.Subject("mt", paused, T0, T0, T0))
    [obs] = [o for o in verdict.observations if o.code == rules.RETENTION_LOW_SPACE and o.disk_id == DISK1]
    assert "paused" in obs.message and "5.0 % free" in obs.message


def test_an_mt_that_does_not_report_retention_changes_nothing() -> None:
    verdict = rules.evaluate(HealthConfig(), rules.Subject("mt", {"disks": {DISK1: {"mt_applied": 1}}}, T0, T0, T0))
    assert rules.RETENTION_LOW_SPACE not in verdict.codes
