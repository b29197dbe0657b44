"""A lab topology file (deploy/lab.toml): which daemons run where, and the configs they get."""

from __future__ import annotations

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
    role: str  # cs | ps | mt | agent
    address: str
    ports: dict[str, int] = field(default_factory=dict)
    disks: tuple[DiskSpec, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # extra keys of the daemon's config file


@dataclass(frozen=True)
class Topology:
    cs: Node
    mts: tuple[Node, ...]
    pss: tuple[Node, ...]
    machines: tuple[Node, ...]

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.cs, *self.mts, *self.pss, *self.machines)

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
        return {}
    mib = int(ps["cache_mib"])
    if mib < 1:
        raise ConfigError(f"PS {ps.get('name')}: cache_mib must be >= 1, not {mib}")
    return {"cache_max_bytes": mib * MiB}


def load(path: Path = DEFAULT_TOPOLOGY) -> Topology:
    try:
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read topology {path}: {exc}") from exc
    cloud, onprem = raw.get("cloud", {}), raw.get("onprem", {})
    try:
        cs_raw = cloud["cs"]
        cs = Node("cs", "cs", cs_raw["address"], {"api": _cs_port(int(cs_raw.get("port", 443)))})
        mts = tuple(Node(m["name"], "mt", m["address"], {"data": int(m.get("data_port", 9443)),
                                                           "control": int(m.get("control_port", 9080))})
                    for m in cloud.get("mt", []))
        pss = tuple(Node(p["name"], "ps", p["address"], {"data": int(p.get("data_port", 9443))},
                         config=_ps_config(p))
                    for p in onprem.get("ps", []))
        machines = tuple(Node(m["name"], "agent", str(m.get("address", "127.0.0.1")), _nbd_ports(m),
                              tuple(DiskSpec(d["name"], int(d["size_mib"]) * MiB) for d in m.get("disks", [])))
                         for m in onprem.get("machines", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"topology {path} is incomplete: {exc!r}") from exc
    if not mts or not pss:
        raise ConfigError(f"topology {path} needs at least one MT and one PS")
    return Topology(cs, mts, pss, machines)
