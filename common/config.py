"""One typed configuration per daemon, with explicit units in every field name.

A daemon reads a TOML file whose keys are the field names below; command-line flags
override single keys (``--set key=value``). Unknown keys are an error, so a typo never
silently falls back to a default. Reading and writing the files: common/configfile.py (``load``,
``from_dict``, ``dump_toml`` are re-exported here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.configfile import dump_toml as dump_toml  # re-exported: the daemons' configs and their file
from common.configfile import from_dict as from_dict
from common.configfile import is_loopback as is_loopback
from common.configfile import load as load
from common.errors import ConfigError

MiB = 1024 * 1024

CS_PORT = 443
CS_FALLBACK_PORT = 8443
PS_DATA_PORT = 9443
MT_DATA_PORT = 9443
MT_CONTROL_PORT = 9080
NBD_PORT = 10809  # the port registered for NBD
DEFAULT_STALL_TIMEOUT_S = 10.0  # ComponentConfig.stall_timeout_s, and ApiClient's when not given


@dataclass
class ComponentConfig:
    """Fields every registered component (PS, MT, agent) has."""

    data_dir: Path = Path("data")
    cs_url: str = "https://127.0.0.1:443"
    passphrase_file: Path | None = None
    enroll_token_file: Path | None = None  # a single-use agent token (common/enroll.py); deleted once spent
    host_id: str = ""
    address: str = "127.0.0.1"
    log_file: Path | None = None
    heartbeat_interval_s: float = 30.0
    settings_wait_s: float = 25.0
    request_timeout_s: float = 30.0
    # a peer that sends and receives no byte this long (a half-open connection) fails the request at
    # once, retriably (common/http.py, common/bulkhttp.py); the whole request stays bounded by
    # request_timeout_s. Need 0 < stall_timeout_s <= request_timeout_s; the default follows a shorter
    # request_timeout_s down.
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    retry_max_backoff_s: float = 5.0
    # certificates (common/component.py): renew once less than this fraction of the validity remains
    cert_renew_fraction: float = 0.33
    cert_check_interval_s: float = 3600.0  # the longest sleep between two looks at the certificate

    def __post_init__(self) -> None:
        if self.stall_timeout_s == DEFAULT_STALL_TIMEOUT_S and 0.0 < self.request_timeout_s < self.stall_timeout_s:
            self.stall_timeout_s = self.request_timeout_s
        if not 0.0 < self.stall_timeout_s <= self.request_timeout_s:
            raise ConfigError(f"stall_timeout_s {self.stall_timeout_s} must be > 0 and at most "
                              f"request_timeout_s {self.request_timeout_s}")


@dataclass
class HealthConfig:
    """Health rules of the CS (cs/health/) and its alert webhook (cs/webhook.py). Defaults are the
    emulated system's (ARCHITECTURE.md §5); a condition raises only once it has held for its
    whole window (``*_window_s``; 0: at once) and clears as soon as it stops holding."""

    evaluate_interval_s: float = 10.0  # the periodic evaluator: no heartbeat, windows, RPO
    ps_cpu_warning_pct: float = 80.0
    ps_cpu_critical_pct: float = 95.0
    ps_cpu_window_s: float = 900.0
    ps_memory_warning_pct: float = 80.0
    ps_memory_critical_pct: float = 95.0
    ps_memory_window_s: float = 900.0
    ps_cache_free_warning_pct: float = 30.0  # under this share of the cache free
    ps_cache_free_critical_pct: float = 25.0
    ps_cache_free_window_s: float = 900.0
    ps_backlog_age_warning_s: float = 1800.0  # the oldest batch not yet uploaded is older than this
    ps_backlog_age_critical_s: float = 2700.0
    ps_backlog_window_s: float = 0.0  # the age is a duration already
    ps_heartbeat_timeout_s: float = 900.0  # 806
    mt_heartbeat_timeout_s: float = 900.0  # 78022
    agent_heartbeat_timeout_s: float = 900.0  # 78174
    ps_unreachable_after_s: float = 300.0  # 78186: an agent's sends to its PS fail to connect this long
    upload_failures_after_s: float = 300.0  # 78028: an agent's sends to its PS are refused this long
    churn_machine_max_bytes_per_s: float = 54e6  # 78188: supported peak churn of one machine (54 MB/s)
    churn_disk_max_bytes_per_s: float = 20e6  # ... and of one disk (2-20 MB/s)
    churn_window_s: float = 900.0
    rpo_threshold_s: float = 900.0  # for a disk whose policy names none
    rpo_window_s: float = 0.0  # RPO is an age already
    clock_skew_threshold_s: float = 300.0  # clock_skew: |a component's clock - the CS's| above this (s)
    webhook_url: str = field(default="", repr=False)  # https://[user:token@]host[:port]/path; empty: none
    webhook_ca_file: Path | None = None  # CA bundle to verify the webhook's server (default: the system's)
    webhook_timeout_s: float = 10.0
    webhook_poll_interval_s: float = 5.0  # how often the outbox is looked at when nothing woke it
    webhook_retry_max_backoff_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("cpu", "memory"):
            warn, crit = getattr(self, f"ps_{name}_warning_pct"), getattr(self, f"ps_{name}_critical_pct")
            if not 0.0 <= warn <= crit <= 100.0:
                raise ConfigError(f"need 0 <= ps_{name}_warning_pct <= ps_{name}_critical_pct <= 100")
        if not 0.0 <= self.ps_cache_free_critical_pct <= self.ps_cache_free_warning_pct <= 100.0:
            raise ConfigError("need 0 <= ps_cache_free_critical_pct <= ps_cache_free_warning_pct <= 100")
        if not 0.0 <= self.ps_backlog_age_warning_s <= self.ps_backlog_age_critical_s:
            raise ConfigError("need 0 <= ps_backlog_age_warning_s <= ps_backlog_age_critical_s")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not value >= 0.0:
                raise ConfigError(f"health.{f.name} must be >= 0")
        if self.evaluate_interval_s <= 0 or self.webhook_timeout_s <= 0 or self.webhook_poll_interval_s <= 0:
            raise ConfigError("evaluate_interval_s, webhook_timeout_s and webhook_poll_interval_s must be > 0")
        if self.webhook_url and not self.webhook_url.startswith("https://"):
            raise ConfigError("health.webhook_url must be an https:// URL")  # never echo it: it may hold a token


@dataclass
class CSConfig:
    data_dir: Path = Path("cs-data")
    listen_host: str = "127.0.0.1"
    port: int = CS_PORT
    fallback_port: int = CS_FALLBACK_PORT
    # default: sqlite+aiosqlite:///{data_dir}/cs.db; or postgresql+asyncpg://user[:password]@host/db
    # (kept out of reprs: it may hold a password; asyncpg also reads PGPASSWORD and ~/.pgpass)
    db_url: str = field(default="", repr=False)
    long_poll_max_s: float = 30.0
    challenge_ttl_s: float = 60.0
    enroll_token_ttl_s: float = 600.0  # lifetime of an agent enrollment token (cs/enrollment.py)
    discovery_interval_s: float = 900.0  # how often a PS discovers its hypervisors (cs/hypervisors.py)
    cert_validity_days: int = 365
    cert_validity_s: float = 0.0  # when > 0, overrides cert_validity_days (tests use seconds)
    cert_renew_fraction: float = 0.33  # the CS's own and the admin's certificates: renew below this fraction
    cert_check_interval_s: float = 3600.0  # the longest sleep between two looks at the CS's certificates
    revocation_refresh_s: float = 1.0  # how often revoked / stale serials are re-read (other CS processes)
    log_file: Path | None = None
    # bookmarks (cs/bookmarks.py): a group bookmark aborts unless every member froze within its timeout
    bookmark_timeout_s: float = 30.0  # the default; a request may ask for 0.1 .. bookmark_max_timeout_s
    bookmark_max_timeout_s: float = 600.0
    bookmark_sweep_interval_s: float = 0.2  # how often bookmarks past their deadline are aborted
    # operator logins (cs/operators.py): session lifetime, and failed logins per client address
    # (a burst of login_fail_burst, then one per login_fail_interval_s; 429 beyond)
    session_ttl_s: float = 8 * 3600.0
    login_fail_burst: int = 5
    login_fail_interval_s: float = 12.0
    # the job runner (cs/runner.py): how often an idle runner looks for jobs (a change in this process
    # wakes it sooner), and how long a claim lasts without renewal (a dead CS's jobs wait this long)
    job_poll_interval_s: float = 1.0
    job_lease_s: float = 30.0
    health: HealthConfig = field(default_factory=HealthConfig)  # [health]: cs/health/, cs/webhook.py

    def database_url(self) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{self.data_dir / 'cs.db'}"

    def cert_validity(self) -> float:
        """Validity of the certificates the CS issues, in seconds."""
        return self.cert_validity_s if self.cert_validity_s > 0 else self.cert_validity_days * 86400.0


@dataclass
class PSConfig(ComponentConfig):
    listen_host: str = "127.0.0.1"
    data_port: int = PS_DATA_PORT
    upload_window_batches: int = 4
    upload_threads: int = 2
    cache_max_bytes: int = 8 * 1024 * MiB
    max_batch_bytes: int = 64 * MiB
    # the newest cached batches kept in memory for their upload (ps/cache.py), for all disks
    cache_memory_bytes: int = 64 * MiB
    # True: the data port is served by the threaded TLS front (common/batchfront.py, ps/front.py), which
    # reads batch bodies off the event loop and relays other requests to the data app on a private unix
    # socket; False: the data app serves the port itself over asyncio's TLS.
    ingest_front: bool = True
    # Throttling (ps/throttle.py): new batches get 507 + Retry-After while the cache's free space
    # (the smaller of what cache_max_bytes leaves and the filesystem's free space) is under
    # cache_throttle_free_pct, until cache_resume_free_pct is free again; a disk whose backlog (bytes
    # not yet durably at the MT) passes disk_backlog_max_bytes alone gets 507 until it is at most
    # disk_backlog_resume_pct % of that limit.
    cache_throttle_free_pct: float = 20.0
    cache_resume_free_pct: float = 25.0
    disk_backlog_max_bytes: int = 4 * 1024 * MiB  # the emulated system's 8 GB is for a 600 GB+ cache
    disk_backlog_resume_pct: float = 75.0
    throttle_retry_after_s: float = 1.0  # Retry-After of a 507 (sent as whole seconds, at least 1)
    cache_fs_check_interval_s: float = 1.0  # how often the filesystem's free space is sampled
    # Uploads to the MTs through an HTTP CONNECT proxy (ps/uplink.py), e.g. "http://proxy:3128"; "" =
    # direct. The CS's per-PS setting (drlab ps proxy set) wins over it. Password: a file's first line.
    upload_proxy: str = ""
    upload_proxy_username: str = ""
    upload_proxy_password_file: str = ""  # a path; "" = no password

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.cache_throttle_free_pct <= self.cache_resume_free_pct <= 100.0:
            raise ConfigError("need 0 <= cache_throttle_free_pct <= cache_resume_free_pct <= 100")
        if self.disk_backlog_max_bytes < 1 or not 0.0 <= self.disk_backlog_resume_pct <= 100.0:
            raise ConfigError("need disk_backlog_max_bytes >= 1 and 0 <= disk_backlog_resume_pct <= 100")
        if self.throttle_retry_after_s <= 0 or self.cache_fs_check_interval_s < 0:
            raise ConfigError("throttle_retry_after_s must be > 0 and cache_fs_check_interval_s >= 0")
        if self.cache_memory_bytes < 0:
            raise ConfigError("cache_memory_bytes must be >= 0 (0: uploads always read the cache files)")


@dataclass
class MTConfig(ComponentConfig):
    listen_host: str = "127.0.0.1"
    data_port: int = MT_DATA_PORT
    control_port: int = MT_CONTROL_PORT
    segment_max_bytes: int = 64 * MiB
    max_batch_bytes: int = 64 * MiB
    hash_max_bytes: int = 64 * MiB  # the most replica bytes one block-hashes answer covers
    # where existing disks may be adopted as replicas (seeds: reprotect, failback; mt/seed.py); None: nowhere
    datastore_dir: Path | None = None
    # Retention (mt/retention.py): the retention volume is retention_max_bytes of journal (0: the
    # data directory's file system, by statvfs); under retention_low_free_pct % free a disk follows
    # its policy's low_space_action until retention_resume_free_pct % is free again.
    retention_max_bytes: int = 0
    retention_low_free_pct: float = 10.0
    retention_resume_free_pct: float = 15.0
    retention_check_interval_s: float = 5.0  # how often an idle (or paused) disk looks again
    # failover views served as NBD exports named after the view id (mt/viewnbd.py); 0: not served.
    # Loopback only (the export has no authentication); "" = listen_host
    view_nbd_port: int = 0
    view_nbd_host: str = ""
    # the newest staged batches kept decoded in memory for their apply (mt/staging.py), for all disks
    staging_memory_bytes: int = 64 * MiB
    # True: the data port is served by the threaded TLS front (common/batchfront.py, mt/front.py), as
    # the PS's is (PSConfig.ingest_front); False: the data app serves it over asyncio's TLS.
    ingest_front: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.view_nbd_port <= 65535:
            raise ConfigError(f"view_nbd_port {self.view_nbd_port} is not a TCP port (0: views not served)")
        nbd_host = self.view_nbd_host or (self.listen_host if self.view_nbd_port else "")
        if nbd_host and not is_loopback(nbd_host):
            raise ConfigError(f"view_nbd_host {nbd_host!r} is not a loopback address (the NBD export of "
                              "views has no authentication): set view_nbd_host to one")
        if self.staging_memory_bytes < 0:
            raise ConfigError("staging_memory_bytes must be >= 0 (0: applies always read the staged files)")
        if self.retention_max_bytes < 0 or self.retention_check_interval_s <= 0:
            raise ConfigError("need retention_max_bytes >= 0 and retention_check_interval_s > 0")
        if not 0.0 <= self.retention_low_free_pct <= self.retention_resume_free_pct <= 100.0:
            raise ConfigError("need 0 <= retention_low_free_pct <= retention_resume_free_pct <= 100")


@dataclass
class DiskConfig:
    name: str = "disk0"
    path: Path = Path("disk0.img")
    size_bytes: int = 256 * MiB


@dataclass
class AgentConfig(ComponentConfig):
    socket_path: Path = Path("agent.sock")
    disks: list[DiskConfig] = field(default_factory=list)
    batch_max_ms: float = 100.0
    batch_max_bytes: int = 4 * MiB
    upload_window_batches: int = 4
    backlog_max_bytes: int = 64 * MiB  # memory bound: tracked data + batches not yet durable at the PS
    metadata_max_bytes: int = 16 * MiB  # metadata-mode regions waiting to be read before bitmap mode
    bitmap_block_bytes: int = 4096  # one dirty bit per block in bitmap mode
    resync_chunk_bytes: int = 1 * MiB
    # checksum resync and verify: one xxh3-128 hash per block (64 KiB: a 1 % resync of scattered 64 KiB
    # changes sends 1.0x the changed bytes where 1 MiB blocks sent 15x; bench/initial_replication.py)
    hash_block_bytes: int = 64 * 1024
    hash_request_bytes: int = 32 * MiB  # disk bytes whose block hashes one request asks the MT for
    # hot extents only (after a crash, a lost or switched PS): finer blocks, so that an extent with a
    # few un-applied writes re-sends their blocks and not the whole extent
    hot_hash_block_bytes: int = 64 * 1024
    verify_rounds: int = 6  # online verify: rounds re-checking blocks that differed (then: unsettled)
    actlog_extent_bytes: int = 1 * MiB  # activity-log granularity
    actlog_linger_s: float = 2.0  # an extent stays hot this long after its last write is applied
    watch_interval_s: float = 0.5  # status poll per disk: MT progress, activity-log cooling, PS loss
    nbd_enabled: bool = False  # serve each disk as an NBD export named after it (agent/nbd.py)
    nbd_listen_host: str = "127.0.0.1"  # loopback only: the export has no authentication
    nbd_port: int = NBD_PORT
    nbd_max_request_bytes: int = 32 * MiB  # the largest NBD READ / WRITE served
    nbd_handshake_timeout_s: float = 30.0  # a client must finish option negotiation within this
    # bookmarks (agent/bookmarks.py): hooks are argv lists run without a shell (empty: none)
    pre_freeze_hook: list[str] = field(default_factory=list)  # quiesces the application; exit 0 = ready
    post_thaw_hook: list[str] = field(default_factory=list)  # resumes it (run whenever pre-freeze ran)
    hook_timeout_s: float = 30.0  # a hook still running then is killed and its bookmark aborted
    freeze_timeout_s: float = 10.0  # writes are never held longer than this
    app_consistent_interval_s: float = 3600.0  # local app-consistent bookmarks (0: none)
    crash_consistent_interval_s: float = 300.0  # local crash-consistent tags (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_loopback(self.nbd_listen_host):
            raise ConfigError(f"nbd_listen_host {self.nbd_listen_host!r} is not a loopback address "
                              "(the NBD export has no authentication)")
        if not 0 <= self.nbd_port <= 65535:
            raise ConfigError(f"nbd_port {self.nbd_port} is not a TCP port")
        if not 4096 <= self.nbd_max_request_bytes <= 32 * MiB:
            raise ConfigError(f"nbd_max_request_bytes {self.nbd_max_request_bytes} is not in [4096, 32 MiB]")
        for name in ("hash_block_bytes", "hot_hash_block_bytes"):
            block = getattr(self, name)
            if block & (block - 1) or not 4096 <= block <= 64 * MiB or self.hash_request_bytes < block:
                raise ConfigError(f"{name} {block} must be a power of two in [4096, 64 MiB] and at most "
                                  f"hash_request_bytes {self.hash_request_bytes}")
        if self.hook_timeout_s <= 0 or self.freeze_timeout_s <= 0:
            raise ConfigError("hook_timeout_s and freeze_timeout_s must be > 0")
        if self.app_consistent_interval_s < 0 or self.crash_consistent_interval_s < 0:
            raise ConfigError("app_consistent_interval_s and crash_consistent_interval_s must be >= 0 (0: off)")
