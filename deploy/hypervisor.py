"""``python -m deploy.hypervisor --config FILE``: an emulated on-prem hypervisor (vCenter-like).

It serves the VM inventory and the guest "install the agent" operation over HTTPS (deploy/hvapi.py)
with a self-signed certificate made at first start (``data_dir/tls/cert.pem``, key 0600) whose
sha256 hex fingerprint is written to ``data_dir/fingerprint`` (the PS pins it). It needs no CS.

Rules: VMs are independent of their manager: stopping the hypervisor (SIGTERM) leaves the VMs'
agents running, and a start re-launches the agent of every installed, powered-on VM that is not
running. :func:`vm_pids` tells the lab which agent processes to stop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import ssl
import sys
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from common import daemon, tls
from common import logging as dlog
from deploy import hvvm
from deploy.hvapi import HypervisorApi
from deploy.hvconfig import HypervisorConfig

log = dlog.get("drlab.hypervisor")

vm_pids = hvvm.vm_pids  # the lab's entry point: VM name -> pid of its running agent

CERT_DAYS = 3650


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def ensure_certificate(data_dir: Path, hosts: list[str]) -> str:
    """Make the self-signed certificate once (kept across restarts); returns its fingerprint."""
    tls_dir = data_dir / "tls"
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    if not (cert_path.exists() and key_path.exists()):
        tls_dir.mkdir(parents=True, exist_ok=True)
        key = tls.new_key()
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drlab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "drlab hypervisor")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_san(hosts), critical=False)
                .sign(key, hashes.SHA256()))
        tls.write_private(key_path, tls.key_pem(key))
        tls.durable_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    fingerprint = fingerprint_of_pem(cert_path.read_bytes())
    tls.durable_write(data_dir / "fingerprint", f"{fingerprint}\n".encode())
    return fingerprint


def fingerprint_of_pem(pem: bytes) -> str:
    """sha256 hex of the certificate's DER form (what aiohttp.Fingerprint compares)."""
    return hashlib.sha256(tls.der_of_pem(pem)).hexdigest()


def server_context(data_dir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(data_dir / "tls" / "cert.pem"), str(data_dir / "tls" / "key.pem"))
    return ctx


class HypervisorService:
    def __init__(self, cfg: HypervisorConfig) -> None:
        self.cfg = cfg
        self.port = 0
        self.fingerprint = ""
        self.launcher = hvvm.Launcher(cfg)
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"HypervisorService(port={self.port}, vms={len(self.cfg.vms)})"

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = ensure_certificate(cfg.data_dir, [cfg.listen_host, "localhost", *cfg.tls_hosts])
        for vm in cfg.vms:
            hvvm.make_disks(cfg.data_dir, vm)
        relaunched = await asyncio.to_thread(self._relaunch)
        sock = daemon.bind_socket(cfg.listen_host, cfg.port)
        self.port = int(sock.getsockname()[1])
        self._runner = web.AppRunner(HypervisorApi(cfg, self.launcher).app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=server_context(cfg.data_dir)).start()
        self._reaper = asyncio.create_task(self._reap_loop(), name="hv-reaper")
        log.info("hypervisor_started", port=self.port, vms=len(cfg.vms), fingerprint=self.fingerprint,
                 relaunched=relaunched)

    def _relaunch(self) -> list[str]:
        """Start the agent of every installed, powered-on VM that is not running."""
        done = []
        for vm in self.cfg.vms:
            if vm.power_state == "on" and hvvm.is_installed(self.cfg.data_dir, vm.name) \
                    and hvvm.running_pid(self.cfg.data_dir, vm.name) is None:
                self.launcher.start(vm.name)
                done.append(vm.name)
        return done

    async def _reap_loop(self) -> None:
        while True:  # collect exited agents of this process (no zombies)
            await asyncio.sleep(1.0)
            self.launcher.reap_all()

    async def stop(self) -> None:
        """Stop serving; the VMs' agents keep running (see the module doc)."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("hypervisor_stopped", port=self.port)


def main(argv: list[str] | None = None) -> int:
    return daemon.main("hypervisor", "drlab emulated on-prem hypervisor", HypervisorConfig, HypervisorService, argv)


if __name__ == "__main__":
    sys.exit(main())
