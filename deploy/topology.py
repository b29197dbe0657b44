"""A lab topology file (deploy/lab.toml): which daemons run where, and the configs they get."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import CS_FALLBACK_PORT, ConfigError, MiB, is_loopback

DEFAULT_TOPOLOGY = Path(__file__).with_name("lab.toml")


@dataclass(frozen=True)
class DiskSpec:
    name: str
    size_bytes: int


@dataclass(frozen=True)
class Node:
    """One daemon of the lab."""

    name: str
    role: str  # cs | ps | mt | agent | hypervisor
    address: str
    ports: dict[str, int] = field(default_factory=dict)
    disks: tuple[DiskSpec, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # extra keys of the daemon's config file
    site: str = "onprem"  # onprem | cloud (the lab puts every component in its site on the CS)

    @property
    def advertised(self) -> str:
        """The address the daemon registers, so the one in its certificate (``advertise``, else ``address``)."""
        return str(self.config.get("address", self.address))


@dataclass(frozen=True)
class Topology:
    """The daemons of both sites. ``mts`` lists the cloud's MTs first (replication to the cloud),
    then the on-prem ones (reprotect, failback); ``pss`` the on-prem PSs first, then the cloud's."""

    cs: Node
    mts: tuple[Node, ...]
    pss: tuple[Node, ...]
    machines: tuple[Node, ...]
    hypervisors: tuple[Node, ...] = ()  # on-prem, vCenter-like: VMs an agent is pushed onto (deploy/hypervisor.py)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.cs, *self.mts, *self.pss, *self.hypervisors, *self.machines)

    def in_site(self, site: str, role: str | None = None) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.site == site and (role is None or n.role == role))

    def node(self, name: str) -> Node:
        found = [n for n in self.nodes if n.name == name]
        if not found:
            raise ConfigError(f"the topology has no node {name!r}")
        return found[0]

    @property
    def cs_url(self) -> str:
        return f"https://{self.cs.address}:{self.cs.ports['api']}"


def _cs_port(requested: int) -> int:
    """Ports under 1024 need root; without it the CS falls back to 8443, as documented."""
    if requested < 1024 and os.geteuid() != 0:
        return CS_FALLBACK_PORT
    return requested


def _nbd_ports(machine: dict[str, Any]) -> dict[str, int]:
    """``nbd_port = N`` on a machine: its agent serves its disks as NBD exports on the machine's
    ``address`` (loopback only), port N."""
    if "nbd_port" not in machine:
        return {}
    address = str(machine.get("address", "127.0.0.1"))
    if not is_loopback(address):
        raise ConfigError(f"machine {machine.get('name')}: NBD needs a loopback address, not {address!r}")
    return {"nbd": int(machine["nbd_port"])}


def _ps_config(ps: dict[str, Any]) -> dict[str, Any]:
    """``cache_mib = N`` on a PS: its cache holds at most N MiB (a small cache throttles early)."""
    if "cache_mib" not in ps:
        return _advertise(ps)
    mib = int(ps["cache_mib"])
    if mib < 1:
        raise ConfigError(f"PS {ps.get('name')}: cache_mib must be >= 1, not {mib}")
    return {"cache_max_bytes": mib * MiB, **_advertise(ps)}


def _advertise(entry: dict[str, Any]) -> dict[str, Any]:
    """``advertise = "HOST"`` on a PS or an MT: the address it registers with the CS, so the one
    its peers are told (a PS's agents, an MT's PSs), while it still listens on ``address``; same
    ports. A network drill runs a fault proxy there (deploy/faultproxy.py)."""
    if "advertise" not in entry:
        return {}
    host = entry["advertise"]
    if not isinstance(host, str) or not host or host.count(":") == 1:  # HOST:PORT is not an address
        raise ConfigError(f"{entry.get('name')}: advertise must be a host address (the ports stay), not {host!r}")
    return {"address": host}


def load(path: Path = DEFAULT_TOPOLOGY) -> Topology:
    try:
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read topology {path}: {exc}") from exc
    cloud, onprem = raw.get("cloud", {}), raw.get("onprem", {})
    try:
        cs_raw = cloud["cs"]
        cs = Node("cs", "cs", cs_raw["address"], {"api": _cs_port(int(cs_raw.get("port", 443)))}, site="cloud")
        mts = _mts(cloud, "cloud") + _mts(onprem, "onprem")
        pss = _pss(onprem, "onprem") + _pss(cloud, "cloud")
        machines = tuple(Node(m["name"], "agent", str(m.get("address", "127.0.0.1")), _nbd_ports(m),
                              tuple(DiskSpec(d["name"], int(d["size_mib"]) * MiB) for d in m.get("disks", [])))
                         for m in onprem.get("machines", []))
        hypervisors = tuple(_hypervisor(h) for h in onprem.get("hypervisors", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"topology {path} is incomplete: {exc!r}") from exc
    if not any(m.site == "cloud" for m in mts) or not any(p.site == "onprem" for p in pss):
        raise ConfigError(f"topology {path} needs at least one MT in the cloud and one PS on-premises")
    names = [n.name for n in (cs, *mts, *pss, *hypervisors, *machines)]
    if len(set(names)) != len(names):
        raise ConfigError(f"topology {path}: node names must be unique")
    return Topology(cs, mts, pss, machines, hypervisors)


def _hypervisor(hv: dict[str, Any]) -> Node:
    """An on-prem hypervisor and its VMs: ``vms = [{name, os?, power_state?, disks = [{name,
    size_mib}]}]`` (no agent runs on them until one is pushed: ``drlab machine install``)."""
    vms = [{"name": str(vm["name"]), "os": str(vm.get("os", "linux")),
            "power_state": str(vm.get("power_state", "on")),
            "disks": [{"name": str(d["name"]), "size_bytes": int(d["size_mib"]) * MiB} for d in vm.get("disks", [])]}
           for vm in hv.get("vms", [])]
    return Node(hv["name"], "hypervisor", hv["address"], {"api": int(hv.get("port", 443))}, config={"vms": vms})


def _mts(section: dict[str, Any], site: str) -> tuple[Node, ...]:
    return tuple(Node(m["name"], "mt", m["address"], {"data": int(m.get("data_port", 9443)),
                                                      "control": int(m.get("control_port", 9080))},
                      config=_advertise(m), site=site)
                 for m in section.get("mt", []))


def _pss(section: dict[str, Any], site: str) -> tuple[Node, ...]:
    return tuple(Node(p["name"], "ps", p["address"], {"data": int(p.get("data_port", 9443))},
                      config=_ps_config(p), site=site)
                 for p in section.get("ps", []))


def with_onprem_pss(topo: Topology, count: int) -> Topology:
    """``topo`` with at least ``count`` on-prem PSs: each one added copies the first on-prem PS's
    ports and takes the next free address of its /24 and the next free name ``psN`` (pure)."""
    onprem = [p for p in topo.pss if p.site == "onprem"]
    added: list[Node] = []
    taken = {n.address for n in topo.nodes}
    names = {n.name for n in topo.nodes}
    first = onprem[0]
    prefix = first.address.rsplit(".", 1)[0]
    for _ in range(count - len(onprem)):
        address = next(f"{prefix}.{i}" for i in range(2, 255) if f"{prefix}.{i}" not in taken)
        name = next(f"ps{i}" for i in range(2, 1000) if f"ps{i}" not in names)
        added.append(Node(name, "ps", address, dict(first.ports), site="onprem"))
        taken.add(address)
        names.add(name)
    cloud = tuple(p for p in topo.pss if p.site != "onprem")
    return dataclasses.replace(topo, pss=(*onprem, *added, *cloud))
