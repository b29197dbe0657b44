"""The lab's on-prem hypervisors (deploy/hypervisor.py): their configs, their credentials, their
registration on the CS, and the agents pushed onto their VMs.

Rules: each hypervisor's admin password and its VMs' guest administrator password are made once,
at random, kept in ``<lab>/<hv>/lab-secrets.json`` (0600) and written only into its config file
(0600). ``lab up`` stores them on the CS as two accounts, ``<hv>-admin`` (discovery) and
``<hv>-guest`` (push installation, an administrator of every VM of that hypervisor), and registers
the hypervisor with the site's first PS and its certificate's fingerprint. A VM's agent is not a
lab node: the hypervisor starts it (``drlab machine install``); ``down`` stops it with the rest.
"""

from __future__ import annotations

import json
import secrets
import socket
from typing import TYPE_CHECKING, Any

from common import errors, tls
from deploy import hvvm
from deploy.topology import Node

if TYPE_CHECKING:
    from deploy.lab import Lab

ADMIN_USER = "administrator@vsphere.local"
GUEST_USER = "root"
# what an installed agent gets in the lab (short intervals, as every lab daemon)
AGENT_OVERRIDES = {"heartbeat_interval_s": 1.0, "settings_wait_s": 10.0}


def admin_account(hv: Node) -> str:
    return f"{hv.name}-admin"


def guest_account(hv: Node) -> str:
    return f"{hv.name}-guest"


def lab_secrets(lab: Lab, hv: Node) -> dict[str, str]:
    """The hypervisor's passwords, made on first use (see the module doc)."""
    path = lab.node_dir(hv) / "lab-secrets.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    made = {"admin_password": secrets.token_urlsafe(18), "guest_password": secrets.token_urlsafe(18)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tls.write_private(path, json.dumps(made).encode())
    return made


def config_for(lab: Lab, hv: Node) -> dict[str, Any]:
    made = lab_secrets(lab, hv)
    vms = [{**vm, "host_id": vm["name"], "address": "127.0.0.1", "guest_username": GUEST_USER,
            "guest_password": made["guest_password"]} for vm in hv.config.get("vms", [])]
    return {"data_dir": str(lab.node_dir(hv)), "listen_host": hv.address, "port": hv.ports["api"],
            "log_file": str(lab.log_path(hv)), "admin_username": ADMIN_USER,
            "admin_password": made["admin_password"], "agent_overrides": AGENT_OVERRIDES, "vms": vms}


def fingerprint(lab: Lab, hv: Node) -> str | None:
    try:
        return (lab.node_dir(hv) / "fingerprint").read_text().strip() or None
    except OSError:
        return None


def vm_agents(lab: Lab) -> dict[str, int]:
    """``<hv>/<vm>`` -> pid of every running agent the lab's hypervisors started."""
    return {f"{hv.name}/{vm}": pid for hv in lab.topology.hypervisors
            for vm, pid in hvvm.vm_pids(lab.node_dir(hv)).items()}


async def _ensure_account(api: Any, name: str, username: str, password: str) -> None:
    try:
        await api.get(f"/v1/accounts/{name}")
    except errors.NotFound:
        await api.post("/v1/accounts", {"name": name, "username": username, "password": password})


async def setup(lab: Lab, api: Any) -> None:
    """Accounts and registrations of the lab's hypervisors on the CS (idempotent)."""
    from cs.client import all_pages

    if not lab.topology.hypervisors:
        return
    comps = await all_pages(api, "/v1/components")
    for hv in lab.topology.hypervisors:
        made = lab_secrets(lab, hv)
        await _ensure_account(api, admin_account(hv), ADMIN_USER, made["admin_password"])
        await _ensure_account(api, guest_account(hv), GUEST_USER, made["guest_password"])
        try:
            await api.get(f"/v1/hypervisors/{hv.name}")
            continue
        except errors.NotFound:
            pass
        pss = [c["component_id"] for n in lab.topology.in_site(hv.site, "ps") for c in comps
               if c["role"] == "ps" and c["host_id"] == n.name]
        if not pss:
            raise errors.Unavailable(f"no registered PS in site {hv.site} to discover {hv.name}")
        body: dict[str, Any] = {"name": hv.name, "address": hv.address, "port": hv.ports["api"],
                                "account": admin_account(hv), "ps_id": pss[0]}
        fp = fingerprint(lab, hv)
        if fp:
            body["fingerprint"] = fp
        await api.post("/v1/hypervisors", body)


def ready(lab: Lab, hv: Node) -> bool:
    """Its certificate is made and its port takes connections."""
    if fingerprint(lab, hv) is None:
        return False
    try:
        socket.create_connection((hv.address, hv.ports["api"]), timeout=0.5).close()
    except OSError:
        return False
    return True
