"""The compose file is validated (no Docker engine runs here): it must parse, and describe the same
lab as deploy/lab.toml — a service per topology node, with the node's name, role and site (its
site's network, its labels), and a config in deploy/compose/ with the node's identity and ports."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.lab import MODULES
from deploy.topology import DEFAULT_TOPOLOGY, Node
from deploy.topology import load as load_topology

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
SITES = ("cloud", "onprem")


@cache
def compose_config() -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it (init-only profiles left out)."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: `make test` installs it (apt-get install docker-compose)"
    proc = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          timeout=50, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def daemons() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose_config()["services"].items() if "init" not in (s.get("profiles") or [])}


def topology_nodes() -> dict[str, Node]:
    return {n.name: n for n in load_topology(DEFAULT_TOPOLOGY).nodes}


def networks_of(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks") or {}
    return set(nets) if isinstance(nets, (dict, list)) else set()


@pytest.mark.timeout(60)
def test_compose_file_is_valid_and_publishes_the_cs() -> None:
    config = compose_config()
    assert set(config["networks"]) == set(SITES)
    ports = [str(p.get("published", p) if isinstance(p, dict) else p) for p in daemons()["cs"].get("ports", [])]
    assert any(p.startswith("443") for p in ports), ports


@pytest.mark.timeout(60)
def test_compose_services_are_the_lab_topology_nodes() -> None:
    services, nodes = daemons(), topology_nodes()
    assert set(services) == set(nodes)
    volumes = set(compose_config().get("volumes") or {})
    for name, node in nodes.items():
        service = services[name]
        assert service["command"][0] == MODULES.get(node.role, node.role), (name, service["command"])
        assert service["labels"] == {"drlab.role": node.role, "drlab.site": node.site}, name
        nets = networks_of(service)
        assert node.site in nets, f"{name} is not on its site's network {node.site}: {nets}"
        assert nets <= set(SITES)
        assert f"{name}-data" in volumes, f"{name} has no volume of its own"
        assert any(str(v).startswith(f"{name}-data:") or (isinstance(v, dict) and v.get("source") == f"{name}-data")
                   for v in service["volumes"]), name
    # the cloud's own daemons never sit in the on-prem network
    for name in ("cs", *(n.name for n in nodes.values() if n.site == "cloud" and n.role == "mt")):
        assert networks_of(services[name]) == {"cloud"}, name


def test_compose_configs_are_the_nodes_with_canonical_ports() -> None:
    from common.config import AgentConfig, CSConfig, MTConfig, PSConfig, load
    from deploy.hvconfig import HypervisorConfig

    assert load(CSConfig, COMPOSE_DIR / "cs.toml").port == 443
    for name, node in topology_nodes().items():
        if node.role == "cs":
            continue
        path = COMPOSE_DIR / f"{name}.toml"
        assert path.exists(), f"no config for {name} in deploy/compose/"
        assert f"/etc/drlab/{name}.toml" in daemons()[name]["command"]
        if node.role == "hypervisor":
            hv = load(HypervisorConfig, path)
            assert (hv.port, hv.listen_host) == (443, "0.0.0.0") and hv.port == node.ports["api"]
            assert [(vm.name, vm.power_state, [(d.name, d.size_bytes) for d in vm.disks]) for vm in hv.vms] == [
                (vm["name"], vm["power_state"], [(d["name"], d["size_bytes"]) for d in vm["disks"]])
                for vm in node.config["vms"]]
            continue
        if node.role == "agent":
            agent = load(AgentConfig, path)
            assert agent.host_id == name
            assert [(d.name, d.size_bytes) for d in agent.disks] == [(d.name, d.size_bytes) for d in node.disks]
            continue
        cfg: Any = load(MTConfig if node.role == "mt" else PSConfig, path)
        assert (cfg.host_id, cfg.address, cfg.data_port) == (name, name, 9443) == (name, name, node.ports["data"])
        if node.role == "mt":
            assert cfg.control_port == 9080 == node.ports["control"]
    assert not {p.stem for p in COMPOSE_DIR.glob("*.toml")} - {*topology_nodes()}, "a config of no node"
