from pathlib import Path

import pytest

from common import errors
from deploy import report
from deploy.topology import DEFAULT_TOPOLOGY, load


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
