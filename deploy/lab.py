"""The process lab: every daemon of a topology as its own OS process, with its own loopback
address, data directory, config file and logs. ``up`` waits until every component has
registered and sent a heartbeat; ``down`` stops them all and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from common.config import NBD_PORT, CSConfig, dump_toml, is_loopback
from deploy import labhv
from deploy.topology import DiskSpec, Node, Topology

log = dlog.get("drlab.lab")

HEARTBEAT_INTERVAL_S = 1.0
SITE_KINDS = {"onprem": "on-prem", "cloud": "cloud"}  # topology site -> the CS's site kind
MODULES = {"hypervisor": "deploy.hypervisor"}  # role -> the module run with python -m (default: the role)
REGISTERED = ("ps", "mt", "agent")  # the roles that register with the CS and heartbeat


@dataclass
class Lab:
    topology: Topology
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()  # paths in configs and seeds are absolute

    @property
    def pids_file(self) -> Path:
        return self.root / "pids.json"

    def node_dir(self, node: Node) -> Path:
        return self.root / node.name

    def config_path(self, node: Node) -> Path:
        return self.root / "config" / f"{node.name}.toml"

    def log_path(self, node: Node) -> Path:
        return self.root / "logs" / f"{node.name}.log"

    @property
    def cs_dir(self) -> Path:
        return self.node_dir(self.topology.cs)

    @property
    def passphrase_file(self) -> Path:
        return self.cs_dir / "passphrase.txt"

    @property
    def admin_files(self) -> tls.IdentityFiles:
        return tls.IdentityFiles(self.cs_dir / "admin")

    def agent_socket(self, node: Node) -> Path:
        return self.node_dir(node) / "agent.sock"

    def datastore(self, site: str) -> Path:
        """Where a site's machines keep their disks; the site's MTs may adopt them (mt/seed.py)."""
        return self.root / "datastore" / site

    def disk_path(self, node: Node, disk_name: str) -> Path:
        return self.datastore(node.site) / node.name / f"{disk_name}.img"

    # -- nodes added while the lab runs (failed-over machines on the cloud's compute host) -----

    @property
    def extra_file(self) -> Path:
        return self.root / "nodes.json"

    def extra_nodes(self) -> tuple[Node, ...]:
        try:
            raw = json.loads(self.extra_file.read_text())
        except (OSError, ValueError):
            return ()
        return tuple(Node(n["name"], n["role"], n["address"], dict(n.get("ports", {})),
                          tuple(DiskSpec(d["name"], int(d["size_bytes"])) for d in n.get("disks", [])),
                          dict(n.get("config", {})), n.get("site", "cloud")) for n in raw)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The topology's daemons and the machines added since (agents last)."""
        return (*self.topology.nodes, *self.extra_nodes())

    def add_node(self, node: Node) -> None:
        """Record a machine started while the lab runs (``down`` and ``status`` include it)."""
        if any(n.name == node.name for n in self.nodes):
            raise errors.Conflict(f"the lab already has a node {node.name}")
        items = [_node_json(n) for n in self.extra_nodes()] + [_node_json(node)]
        self.root.mkdir(parents=True, exist_ok=True)
        tls.durable_write(self.extra_file, json.dumps(items, indent=2).encode())
        self.write_config(node)

    def nbd_url(self, node: Node, disk_name: str) -> str:
        """The NBD URI of a disk of a machine whose topology entry sets ``nbd_port``."""
        if "nbd" not in node.ports:
            raise errors.BadRequest(f"machine {node.name} has no NBD export (set nbd_port in the topology)")
        return f"nbd://{node.address}:{node.ports['nbd']}/{disk_name}"

    # -- configuration ---------------------------------------------------------------------

    def cs_config(self) -> CSConfig:
        cs = self.topology.cs
        return CSConfig(data_dir=self.cs_dir, listen_host=cs.address, port=cs.ports["api"],
                        log_file=self.log_path(cs))

    async def init(self) -> bool:
        """Initialise the CS (database, CA, passphrase) unless it already is. True if new."""
        from cs.init import init_cs

        if (self.cs_dir / "identity" / "cert.pem").exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        await init_cs(self.cs_config(), hosts=[self.topology.cs.address])
        return True

    def _component_config(self, node: Node) -> dict[str, Any]:
        return {
            "data_dir": str(self.node_dir(node)), "cs_url": self.topology.cs_url,
            "passphrase_file": str(self.passphrase_file), "host_id": node.name, "address": node.address,
            "log_file": str(self.log_path(node)), "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "settings_wait_s": 10.0,
        }

    def config_for(self, node: Node) -> dict[str, Any]:
        if node.role == "cs":
            cfg = self.cs_config()
            return {"data_dir": str(cfg.data_dir), "listen_host": cfg.listen_host, "port": cfg.port,
                    "log_file": str(cfg.log_file)}
        if node.role == "hypervisor":
            return labhv.config_for(self, node)
        data = self._component_config(node)
        if node.role == "ps":
            data.update(listen_host=node.address, data_port=node.ports["data"], **node.config)
        elif node.role == "mt":
            data.update(listen_host=node.address, data_port=node.ports["data"],
                        control_port=node.ports["control"], datastore_dir=str(self.datastore(node.site)),
                        **node.config)  # advertise (deploy/topology.py)
            if is_loopback(node.address):  # failover views as NBD exports on the MT's own loopback address
                data["view_nbd_port"] = NBD_PORT
        else:
            data["socket_path"] = str(self.agent_socket(node))
            data["disks"] = [{"name": d.name, "path": str(self.disk_path(node, d.name)),
                              "size_bytes": d.size_bytes} for d in node.disks]
            if "nbd" in node.ports:
                data.update(nbd_enabled=True, nbd_listen_host=node.address, nbd_port=node.ports["nbd"])
        return data

    def write_configs(self) -> None:
        for node in self.nodes:
            self.write_config(node)

    def write_config(self, node: Node) -> None:
        path = self.config_path(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.node_dir(node).mkdir(parents=True, exist_ok=True)
        for disk in node.disks:
            self.disk_path(node, disk.name).parent.mkdir(parents=True, exist_ok=True)
        tls.write_private(path, dump_toml(self.config_for(node)).encode())  # a hypervisor's holds passwords

    # -- processes ---------------------------------------------------------------------------

    def read_pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.pids_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def _write_pids(self, pids: dict[str, int]) -> None:
        self.pids_file.parent.mkdir(parents=True, exist_ok=True)
        tls.durable_write(self.pids_file, json.dumps(pids, indent=2).encode())

    def start_node(self, node: Node) -> int:
        """Start one daemon (used by ``up`` and by drills that restart a killed one)."""
        pids = self.read_pids()
        if node.name in pids and alive(pids[node.name]):
            return pids[node.name]
        out = self.root / "logs" / f"{node.name}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as fh:
            argv = [sys.executable, "-m", MODULES.get(node.role, node.role), "--config", str(self.config_path(node))]
            proc = subprocess.Popen(argv,
                                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=_child_env())
        pids[node.name] = proc.pid
        self._write_pids(pids)
        log.info("started", node=node.name, role=node.role, pid=proc.pid)
        return proc.pid

    def kill_node(self, node: Node, sig: int = signal.SIGKILL) -> None:
        pid = self.read_pids().get(node.name)
        if pid and alive(pid):
            os.kill(pid, sig)
            _wait_gone([pid], 10.0)

    async def up(self, timeout_s: float = 60.0) -> None:
        await self.init()
        self.write_configs()
        self.start_node(self.topology.cs)
        await self.wait_cs(timeout_s)
        for node in self.nodes[1:]:
            self.start_node(node)
        await self.wait_healthy(timeout_s)
        await self.assign_sites()
        async with self.admin() as admin:
            await labhv.setup(self, admin.api)

    async def assign_sites(self, nodes: tuple[Node, ...] | None = None) -> None:
        """Put every registered component of ``nodes`` (default: all) in its site on the CS, so
        that protection picks a PS in the machine's site and an MT in the other (cs/disks.py)."""
        wanted = nodes if nodes is not None else self.nodes[1:]
        async with self.admin() as admin:
            comps = {(c["role"], c["host_id"]): c["component_id"] for c in await admin.components()}
            for site in sorted({n.site for n in wanted}):
                members = [comps[(n.role, n.name)] for n in wanted if n.site == site and (n.role, n.name) in comps]
                await admin.ensure_site(site, SITE_KINDS[site])
                if members:
                    await admin.site_members(site, members)

    async def wait_cs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with self.admin() as admin:
            while True:
                try:
                    await admin.components()
                    return
                except errors.DrlabError:
                    self._check_alive(self.topology.cs)
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    async def wait_healthy(self, timeout_s: float, nodes: tuple[Node, ...] | None = None) -> None:
        """Until every daemon (of ``nodes``, default: all) has registered and heartbeated."""
        deadline = time.monotonic() + timeout_s
        wanted = nodes or self.nodes[1:]
        expected = {(n.role, n.name) for n in wanted if n.role in REGISTERED}
        hypervisors = [n for n in wanted if n.role == "hypervisor"]
        async with self.admin() as admin:
            while True:
                items = await admin.components()
                seen = {(c["role"], c["host_id"]) for c in items if c.get("last_heartbeat")}
                if expected <= seen and all(labhv.ready(self, hv) for hv in hypervisors):
                    return
                for node in nodes or self.nodes:
                    self._check_alive(node)
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted([f"{r}:{n}" for r, n in expected - seen]
                                               + [f"hypervisor:{h.name}" for h in hypervisors
                                                  if not labhv.ready(self, h)]))
                    raise errors.Unavailable(f"lab not healthy after {timeout_s:.0f} s: missing {missing}")
                await asyncio.sleep(0.2)

    def _check_alive(self, node: Node) -> None:
        pid = self.read_pids().get(node.name)
        if pid is not None and not alive(pid):
            tail = (self.root / "logs" / f"{node.name}.out").read_text(errors="replace")[-2000:]
            raise errors.Unavailable(f"{node.name} exited during start-up; last output:\n{tail}")

    def down(self, timeout_s: float = 15.0) -> list[str]:
        """SIGTERM every daemon (agents first, those on the hypervisors' VMs too; CS last), then
        SIGKILL what is left."""
        pids = {**labhv.vm_agents(self), **self.read_pids()}
        order = [*labhv.vm_agents(self), *(n.name for n in reversed(self.nodes))]
        running = [(name, pids[name]) for name in order if name in pids and alive(pids[name])]
        for _name, pid in running:
            os.kill(pid, signal.SIGTERM)
        left = _wait_gone([pid for _, pid in running], timeout_s)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        _wait_gone(left, 5.0)
        self.pids_file.unlink(missing_ok=True)
        return [name for name, pid in running if pid in left]

    def status(self) -> list[dict[str, Any]]:
        pids = self.read_pids()
        rows = [{"name": n.name, "role": n.role, "address": n.address, "ports": n.ports,
                 "pid": pids.get(n.name), "running": bool(pids.get(n.name) and alive(pids[n.name]))}
                for n in self.nodes]
        return rows + [{"name": name, "role": "agent", "address": "127.0.0.1", "ports": {}, "pid": pid,
                        "running": True} for name, pid in labhv.vm_agents(self).items()]

    def admin(self) -> Any:
        from cs.client import CSAdminClient

        return CSAdminClient(self.topology.cs_url, self.admin_files)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.05)
    return left


def _node_json(node: Node) -> dict[str, Any]:
    return {"name": node.name, "role": node.role, "address": node.address, "ports": node.ports,
            "disks": [{"name": d.name, "size_bytes": d.size_bytes} for d in node.disks],
            "config": node.config, "site": node.site}
