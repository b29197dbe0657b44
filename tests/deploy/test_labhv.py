"""The lab's hypervisor configs: random passwords made once and kept (0600), a config the
hypervisor daemon loads, with the topology's VMs (tests/integration/test_push_install_lab.py runs it)."""

from __future__ import annotations

import stat
from pathlib import Path

from common.config import load
from deploy import labhv
from deploy.hvconfig import HypervisorConfig
from deploy.lab import Lab
from deploy.topology import load as load_topology


def test_the_hypervisor_config_is_private_and_keeps_its_passwords(tmp_path: Path) -> None:
    lab = Lab(load_topology(), tmp_path / "lab")
    (hv,) = lab.topology.hypervisors
    lab.write_config(hv)
    path = lab.config_path(hv)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secrets_file = lab.node_dir(hv) / "lab-secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    cfg = load(HypervisorConfig, path)
    made = labhv.lab_secrets(lab, hv)
    assert cfg.admin_password == made["admin_password"] != made["guest_password"]
    assert len(made["admin_password"]) >= 20
    assert [(vm.name, vm.host_id, vm.power_state, vm.guest_password) for vm in cfg.vms] == [
        (vm["name"], vm["name"], vm["power_state"], made["guest_password"]) for vm in hv.config["vms"]]
    assert (cfg.listen_host, cfg.port) == (hv.address, hv.ports["api"])
    lab.write_config(hv)  # written again: the same passwords
    assert load(HypervisorConfig, path).admin_password == made["admin_password"]
    assert made["admin_password"] not in repr(cfg)


def test_a_lab_without_hypervisors_has_no_vm_agents(tmp_path: Path) -> None:
    lab = Lab(load_topology(), tmp_path / "lab")
    assert labhv.vm_agents(lab) == {}
    assert labhv.fingerprint(lab, lab.topology.hypervisors[0]) is None
    assert not labhv.ready(lab, lab.topology.hypervisors[0])
