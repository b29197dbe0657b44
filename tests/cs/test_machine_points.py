"""The machine-point rule (pure): one W for every disk of a machine, checked against the writes a
simulated machine made — the truth is that a disk's chosen point holds exactly its writes <= W."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from common import errors
from cs import machinepoints as mp
from cs.machines import after_probe, failover_outcome, first_query, parse_point


@dataclass
class Machine:
    """A machine as the agent's batcher cuts it: every disk at the same instant; a disk with changes
    gets a batch, an idle one only an empty mark when ``idle_mark`` time passed since its last cut."""

    ndisks: int
    idle_mark: int | None = None
    wnum: int = 0
    t: int = 0
    writes: list[tuple[int, int, int]] = field(default_factory=list)  # (wnum, disk, t)
    points: dict[int, list[mp.DiskPoint]] = field(default_factory=dict)
    pending: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    last_cut: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in range(self.ndisks):
            self.points[d], self.pending[d], self.last_cut[d] = [], [], 0

    def write(self, disk: int, dt: int = 1) -> None:
        self.t += dt
        self.wnum += 1
        self.writes.append((self.wnum, disk, self.t))
        self.pending[disk].append((self.wnum, self.t))

    def cut(self, dt: int = 1) -> None:
        self.t += dt
        if not any(self.pending.values()):
            return
        for d in range(self.ndisks):
            pend = self.pending[d]
            idle = self.idle_mark is not None and self.t - self.last_cut[d] >= self.idle_mark
            if not pend and not idle:
                continue
            first, t_first, t_last = (pend[0][0], pend[0][1], pend[-1][1]) if pend else (0, self.t, self.t)
            seq = len(self.points[d]) + 1
            self.points[d].append(mp.DiskPoint(1, seq, first, self.wnum, t_first, t_last, "exact"))
            self.pending[d], self.last_cut[d] = [], self.t

    def windows(self, newest: int | None = None) -> dict[str, mp.Window]:
        return {f"d{d}": mp.Window(pts[-newest:] if newest else pts) for d, pts in self.points.items()}

    def latests(self) -> dict[str, mp.DiskPoint | None]:
        return {f"d{d}": (pts[-1] if pts else None) for d, pts in self.points.items()}

    def holds_exactly(self, disk: str, point: mp.DiskPoint, wnum: int) -> bool:
        """The disk's writes <= point.wnum_hi are its writes <= wnum (nothing of it in between)."""
        d = int(disk[1:])
        return not [w for w, dd, _ in self.writes if dd == d and point.wnum_hi < w <= wnum]


def random_machine(rng: random.Random, ndisks: int = 3, writes: int = 400, idle_mark: int | None = None,
                   weights: list[float] | None = None) -> Machine:
    m = Machine(ndisks, idle_mark)
    for _ in range(writes):
        m.write(rng.choices(range(ndisks), weights or [1.0] * ndisks)[0], rng.randint(1, 5))
        if rng.random() < 0.25:
            m.cut(rng.randint(0, 3))
    m.cut()
    return m


@pytest.mark.parametrize("idle_mark", [None, 10])
def test_every_listed_point_holds_each_disks_writes_up_to_its_w(seed: int, idle_mark: int | None) -> None:
    rng = random.Random(seed)
    m = random_machine(rng, idle_mark=idle_mark, weights=[5, 2, 1])
    listed = mp.listing(m.windows(), 10_000)
    assert listed, "no machine point listed"
    top = mp.latest_wnum(m.latests())
    assert listed[-1].wnum == top
    for point in listed:
        assert set(point.disks) == {"d0", "d1", "d2"}
        for disk, p in point.disks.items():
            assert p.wnum_hi <= point.wnum and m.holds_exactly(disk, p, point.wnum), (disk, p, point.wnum)
        assert point.t_ns == max(p.t_last_ns for p in point.disks.values())
    # every boundary of any disk up to the machine's latest is a machine point (nothing missed)
    boundaries = {p.wnum_hi for pts in m.points.values() for p in pts if p.wnum_hi <= top}
    first_all = max(pts[0].wnum_hi for pts in m.points.values())  # before it some disk had no point yet
    assert {p.wnum for p in listed} == {w for w in boundaries if w >= first_all}
    assert [p.wnum for p in listed] == sorted(p.wnum for p in listed)


def test_a_point_inside_a_disks_batch_is_no_machine_point() -> None:
    w = mp.Window([mp.DiskPoint(1, 1, 1, 5, 0, 1, "exact"), mp.DiskPoint(1, 2, 7, 9, 2, 3, "exact")])
    assert w.at(5) is not None and w.at(6) is not None  # no write of this disk in (5, 6]
    assert w.at(7) is None and w.at(8) is None  # writes 7..9 are one batch: 7 and 8 are inside it
    assert w.at(9) == w.points[1]
    assert w.at(10) is None  # past the disk's newest point: not known yet
    assert w.at(4) is None  # before its first point


def test_a_disk_idle_for_a_long_time_holds_the_machines_latest_back_without_marks() -> None:
    m = Machine(3)
    for i in range(30):
        m.write(i % 3)
    m.cut()
    for _ in range(500):  # disk 2 idle from here on; 0 and 1 keep writing
        m.write(0)
        m.write(1)
        m.cut()
    idle_latest = m.points[2][-1].wnum_hi
    assert idle_latest == 30 and m.points[0][-1].wnum_hi == m.wnum
    assert mp.latest_wnum(m.latests()) == 30  # its state after 30 is not known: nothing newer is consistent
    listed = mp.listing(m.windows(), 100)
    assert [p.wnum for p in listed] == [30]
    assert listed[0].disks["d0"] == m.points[0][0]


def test_a_disk_idle_for_a_long_time_with_marks_lags_one_mark_at_most() -> None:
    m = Machine(3, idle_mark=10)
    for i in range(30):
        m.write(i % 3)
    m.cut()
    for _ in range(500):
        m.write(0, dt=1)
        m.write(1, dt=1)
        m.cut(dt=1)
    top = mp.latest_wnum(m.latests())
    assert m.wnum - top <= 2 * 10  # within one idle mark of writes (two writes a time unit... and a cut)
    point = mp.machine_point(m.windows(), top)
    assert point is not None
    assert point.disks["d2"].wnum_first == 0  # an empty mark: the idle disk's state is its write 30's
    assert all(m.holds_exactly(d, p, top) for d, p in point.disks.items())
    # only the newest few points of each disk are needed to find it: the mark is recent
    assert mp.machine_point(m.windows(newest=5), top) == point


def test_a_disk_ahead_of_the_others_goes_back_to_the_machine_boundary() -> None:
    m = Machine(3)
    for i in range(60):
        m.write(i % 3)
        if i % 7 == 6:
            m.cut()
    m.cut()
    applied = {d: len(m.points[d]) for d in (1, 2)}
    for i in range(60):
        m.write(i % 3)
        if i % 5 == 4:
            m.cut()
    m.cut()
    # disk 0's MT has applied everything; the MTs of disks 1 and 2 are still at the cut at 60
    windows = {"d0": mp.Window(m.points[0]), **{f"d{d}": mp.Window(m.points[d][:n]) for d, n in applied.items()}}
    latests = {d: w.points[-1] for d, w in windows.items()}
    top = mp.latest_wnum(latests)
    assert top == 60 < latests["d0"].wnum_hi == 120
    point = mp.machine_point(windows, top)
    assert point is not None and point.disks["d0"].wnum_hi == 60 and point.disks["d0"] != latests["d0"]
    assert all(m.holds_exactly(d, p, 60) for d, p in point.disks.items())
    assert mp.listing(windows, 100)[-1] == point  # nothing newer is consistent yet
    with pytest.raises(errors.Conflict):
        mp.check_wnum(latests, 61)
    assert mp.check_wnum(latests, 60) == 60


def _brute_time_wnum(m: Machine, t_ns: int, top: int) -> int | None:
    """The newest boundary <= top whose every non-empty batch so far ended at or before T."""
    best = None
    first_all = max(pts[0].wnum_hi for pts in m.points.values())  # every disk has a point from there
    for w in sorted({p.wnum_hi for pts in m.points.values() for p in pts if first_all <= p.wnum_hi <= top}):
        if all(p.t_last_ns <= t_ns for pts in m.points.values() for p in pts if p.wnum_first and p.wnum_hi <= w):
            best = w
    return best


def _time_choice(m: Machine, t_ns: int) -> int:
    """What the CS does: probe (latest, first point with a write after T), then below the bound."""
    latests = m.latests()
    afters = {f"d{d}": next((p for p in pts if p.wnum_first and p.t_last_ns > t_ns), None)
              for d, pts in m.points.items()}
    bound = mp.time_bound(latests, afters)
    belows = {f"d{d}": next((p for p in reversed(pts) if p.wnum_hi < bound), None) for d, pts in m.points.items()}
    return mp.time_wnum(belows, bound)


@pytest.mark.parametrize("idle_mark", [None, 8])
def test_time_based_point_is_the_newest_without_a_later_write(seed: int, idle_mark: int | None) -> None:
    rng = random.Random(seed + 1)
    m = random_machine(rng, writes=300, idle_mark=idle_mark, weights=[1, 3, 1])
    top = mp.latest_wnum(m.latests())
    checked = 0
    for _ in range(60):
        t_ns = rng.randint(0, m.t + 5)
        expected = _brute_time_wnum(m, t_ns, top)
        if expected is None:
            with pytest.raises(errors.NotFound):
                _time_choice(m, t_ns)
            continue
        wnum = _time_choice(m, t_ns)
        assert wnum == expected, t_ns
        assert all(t <= t_ns for w, _, t in m.writes if w <= wnum)  # no write after T
        point = mp.machine_point(m.windows(), wnum)
        assert point is not None and all(m.holds_exactly(d, p, wnum) for d, p in point.disks.items())
        checked += 1
    assert checked > 30


def test_a_listed_points_time_selects_that_point(seed: int) -> None:
    m = random_machine(random.Random(seed + 2), idle_mark=6)
    for point in mp.listing(m.windows(), 10_000):
        assert _time_choice(m, point.t_ns) == point.wnum


def test_accuracy_of_a_machine_point_is_its_worst_disks() -> None:
    a = mp.Window([mp.DiskPoint(1, 1, 1, 4, 0, 1, "exact")])
    b = mp.Window([mp.DiskPoint(2, 7, 2, 4, 0, 2, "approximate")])
    c = mp.Window([mp.DiskPoint(1, 3, 0, 4, 0, 3, "exact")])
    point = mp.machine_point({"a": a, "b": b, "c": c}, 4)
    assert point is not None and point.accuracy == "approximate" and point.t_ns == 3
    assert mp.worst(["exact", "none", "approximate"]) == "none"


def test_latest_needs_a_point_on_every_disk() -> None:
    with pytest.raises(errors.NotFound):
        mp.latest_wnum({"a": mp.DiskPoint(1, 1, 1, 3, 0, 0, "exact"), "b": None})
    with pytest.raises(errors.Conflict):
        mp.latest_wnum({})


@pytest.mark.parametrize("bad", [None, [], {"gen": 1}, {"gen": -1, "seq": 1, "wnum_first": 0, "wnum_hi": 1,
                                                           "t_first_ns": 0, "t_last_ns": 0, "accuracy": "exact"},
                                 {"gen": 1, "seq": 1, "wnum_first": 0, "wnum_hi": True, "t_first_ns": 0,
                                  "t_last_ns": 0, "accuracy": "exact"},
                                 {"gen": 1, "seq": 1, "wnum_first": 0, "wnum_hi": 1, "t_first_ns": 0,
                                  "t_last_ns": 0, "accuracy": "perfect"}])
def test_a_malformed_point_from_an_mt_is_refused(bad: object) -> None:
    with pytest.raises(errors.BadRequest):
        mp.DiskPoint.parse(bad)


def test_phases_of_a_machine_failover() -> None:
    p = {"gen": 1, "seq": 1, "wnum_first": 1, "wnum_hi": 10, "t_first_ns": 1, "t_last_ns": 5, "accuracy": "exact"}
    q = dict(p, seq=2, wnum_hi=14, t_last_ns=9)
    results = {"a": {"latest": p}, "b": {"latest": q}}
    assert first_query("latest") == {"drain": True} and first_query("latest-processed") == {"drain": False}
    assert first_query({"time_ns": 7}) == {"drain": True, "time_ns": 7}
    assert after_probe("latest", results) == ("failover", 10)
    assert after_probe({"wnum": 9}, results) == ("failover", 9)
    with pytest.raises(errors.Conflict):
        after_probe({"wnum": 11}, results)
    timed = {"a": {"latest": p, "after": None}, "b": {"latest": q, "after": dict(q, wnum_first=12)}}
    assert after_probe({"time_ns": 6}, timed) == ("below", 11)
    with pytest.raises(errors.BadRequest):
        after_probe("latest", {"a": {"latest": {"gen": "x"}}})
    out = failover_outcome(10, {"a": "disk0", "b": "disk1"}, {"a": "j1", "b": "j2"},
                           {"b": {"image_path": "/b", "point": {"wnum_hi": 10, "t_last_ns": 8, "accuracy": "exact"}},
                            "a": {"image_path": "/a", "point": {"wnum_hi": 7, "t_last_ns": 9,
                                                                 "accuracy": "approximate"}}})
    assert (out["wnum"], out["t_ns"], out["accuracy"]) == (10, 9, "approximate")
    assert [d["name"] for d in out["disks"]] == ["disk0", "disk1"]
    with pytest.raises(errors.BadRequest):  # an MT answering a point past W breaks the rule
        failover_outcome(10, {"a": "disk0"}, {"a": "j1"},
                         {"a": {"image_path": "/a", "point": {"wnum_hi": 11, "t_last_ns": 1, "accuracy": "exact"}}})


@pytest.mark.parametrize("body", [{"point": "latest-nothing"}, {"point": {"wnum": 0}},
                                  {"point": {"time_ns": "x"}}, {"point": {"wnum": 1, "time_ns": 2}},
                                  {"point": "latest", "extra": 1}, {"point": {"tag": "a"}}])
def test_bad_machine_point_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(errors.BadRequest):
        parse_point(body)
    assert parse_point({}) == "latest"
    assert parse_point({"point": {"wnum": 5}}) == {"wnum": 5}
