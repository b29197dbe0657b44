from pathlib import Path

import pytest

from common import errors
from deploy import report
from deploy.topology import DEFAULT_TOPOLOGY, load, with_onprem_pss


def test_default_topology_puts_sites_on_their_loopback_ranges() -> None:
    topo = load(DEFAULT_TOPOLOGY)
    ranges = {"cloud": "127.0.2.", "onprem": "127.0.1."}
    assert topo.cs.site == "cloud"
    assert all(n.address.startswith(ranges[n.site]) for n in topo.nodes if n.role != "agent")
    assert topo.mts[0].site == "cloud" and topo.pss[0].site == "onprem"  # the way there comes first
    assert {n.name for n in topo.in_site("onprem", "mt")} == {"mt2"}  # the way back: reprotect, failback
    assert {n.name for n in topo.in_site("cloud", "ps")} == {"ps2"}
    assert topo.pss[0].ports == {"data": 9443}
    assert topo.mts[0].ports == {"data": 9443, "control": 9080}
    assert topo.machines[0].disks[0].size_bytes == 256 * 1024 * 1024


def test_duplicate_node_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[cloud]\ncs = { address = "127.0.2.1" }\nmt = [{ name = "x", address = "127.0.2.2" }]\n'
                    '[onprem]\nps = [{ name = "x", address = "127.0.1.1" }]\n')
    with pytest.raises(errors.ConfigError, match="unique"):
        load(path)


def test_incomplete_topology_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[cloud]\ncs = { address = "127.0.2.1" }\n')
    with pytest.raises(errors.ConfigError, match="MT"):
        load(path)


def test_percentile_and_table() -> None:
    values = list(range(1, 101))
    assert report.percentile(values, 50) == 50
    assert report.percentile(values, 99) == 99
    assert report.percentile([], 50) == 0.0
    text = report.table(["a", "bb"], [[1, "x"], ["long", 2]])
    assert "| long | 2  |" in text


def test_advertise_is_the_registered_address_and_the_bind_address_stays(tmp_path: Path) -> None:
    from deploy.lab import Lab

    path = tmp_path / "lab.toml"
    path.write_text('[cloud]\ncs = { address = "127.0.2.1" }\n'
                    'mt = [{ name = "mt1", address = "127.0.2.2", advertise = "127.0.2.202" }]\n'
                    '[onprem]\nps = [{ name = "ps1", address = "127.0.1.1", advertise = "127.0.1.201", '
                    'cache_mib = 4 }]\n')
    topo = load(path)
    lab = Lab(topo, tmp_path / "lab")
    mt, ps = lab.config_for(topo.mts[0]), lab.config_for(topo.pss[0])
    assert (mt["listen_host"], mt["address"]) == ("127.0.2.2", "127.0.2.202")
    assert (ps["listen_host"], ps["address"], ps["cache_max_bytes"]) == ("127.0.1.1", "127.0.1.201", 4 << 20)
    assert (topo.mts[0].advertised, topo.cs.advertised) == ("127.0.2.202", "127.0.2.1")
    for bad in ('"127.0.1.201:9443"', '""', "7"):
        path.write_text('[cloud]\ncs = { address = "127.0.2.1" }\nmt = [{ name = "mt1", address = "127.0.2.2" }]\n'
                        f'[onprem]\nps = [{{ name = "ps1", address = "127.0.1.1", advertise = {bad} }}]\n')
        with pytest.raises(errors.ConfigError, match="advertise"):
            load(path)


def test_with_onprem_pss_adds_free_addresses_and_names_and_keeps_the_rest() -> None:
    topo = load(DEFAULT_TOPOLOGY)  # ps1 on-prem (127.0.1.1), ps2 in the cloud; mt2 holds 127.0.1.2
    two = with_onprem_pss(topo, 2)
    added = [p for p in two.pss if p not in topo.pss]
    assert len(added) == 1 and added[0].site == "onprem" and added[0].ports == topo.pss[0].ports
    assert added[0].name not in {n.name for n in topo.nodes}
    assert added[0].address.startswith("127.0.1.") and added[0].address not in {n.address for n in topo.nodes}
    assert [p.site for p in two.pss] == ["onprem", "onprem", "cloud"]  # on-prem PSs first, as load() orders them
    assert with_onprem_pss(two, 2) == two and with_onprem_pss(topo, 1) == topo
    three = with_onprem_pss(topo, 3)
    assert len({p.address for p in three.pss}) == 4 and len({p.name for p in three.pss}) == 4


def test_ago_reads_as_an_age() -> None:
    now = 10**18
    assert report.ago(now - 400_000_000, now) == "0.4 s ago"
    assert report.ago(now - 180 * 10**9, now) == "3 min ago"
    assert report.ago(now - 7560 * 10**9, now) == "2.1 h ago"
    assert report.ago(now - 3 * 86400 * 10**9, now) == "3.0 d ago"
    assert report.ago(now + 10**9, now) == "0.0 s ago"  # a clock a little ahead is not negative
    assert report.ago(None, now) == "never" and report.ago("n/a", now) == "n/a"
