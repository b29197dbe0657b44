"""deploy/cli_inventory.py's pure parts: rows of the inventory and hypervisor tables, and names
resolved to component ids (tests/integration/test_push_install_lab.py runs the commands)."""

from __future__ import annotations

from typing import Any

import pytest

from common import errors
from deploy.cli_inventory import disks_text, hv_rows, resolve, vm_rows

PS = "ab" * 16


class FakeApi:
    def __init__(self) -> None:
        self.calls = 0

    async def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls += 1
        assert path == "/v1/components"
        return {"items": [{"component_id": PS, "role": "ps", "host_id": "ps1"},
                          {"component_id": "cd" * 16, "role": "agent", "host_id": "ps1"}], "next": None}


def test_disks_and_rows_read_well() -> None:
    assert disks_text([{"name": "disk0", "size_bytes": 64 << 20}, {"name": "d1", "size_bytes": 2 << 30}]) == \
        "disk0 64 MiB, d1 2 GiB"
    assert disks_text([]) == "-"
    [row] = vm_rows([{"vm": "web1", "disks": [{"name": "disk0", "size_bytes": 8 << 20}], "component_id": None}])
    assert (row["disks"], row["component_id"]) == ("disk0 8 MiB", "-")
    [ok, bad] = hv_rows([{"name": "hv1", "last_discovery_ns": None, "last_error": None},
                         {"name": "hv2", "last_discovery_ns": 1_700_000_000 * 10**9,
                          "last_error": {"code": "credentials_refused", "message": "401 from /api/vms"}}])
    assert (ok["last_discovery"], ok["last_error"]) == ("never", "-")
    assert bad["last_error"] == "credentials_refused: 401 from /api/vms" and bad["last_discovery"].startswith("20")


async def test_names_resolve_by_role_and_an_unknown_one_is_a_clear_error() -> None:
    api = FakeApi()
    assert await resolve(api, "ps", PS) == PS and api.calls == 0  # an id needs no lookup
    assert await resolve(api, "ps", "ps1") == PS
    assert await resolve(api, "agent", "ps1") == "cd" * 16
    with pytest.raises(errors.NotFound, match="no master target with host id 'ps1'"):
        await resolve(api, "mt", "ps1")
