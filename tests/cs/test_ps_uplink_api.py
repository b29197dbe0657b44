"""A PS's upload proxy and bandwidth limit on the CS (cs/psconfig.py, cs/api/psconfig.py): set,
shown, cleared through the API and the CLI's pure parts; delivered in the PS's settings document
(the only place the proxy password appears in clear); bad input is a 400 that changes nothing."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest
import structlog
from cshelpers import Site, raw, settings

from common import errors
from cs import psconfig
from deploy import cli_ps_uplink
from tests.conftest import stored_bytes

PASSWORD = "pr0xy-Pa55word-never-shown"
MB = 1_000_000


async def test_proxy_set_show_clear_and_the_password_never_returned(site: Site) -> None:
    env = site.env
    api = env.admin._api
    ps = await site.ps()
    path = f"/v1/ps/{ps.component_id}/proxy"
    assert await api.get(path) == {"ps_id": ps.component_id, "url": None, "username": None, "password_set": False}
    before = (await settings(ps))["version"]
    with structlog.testing.capture_logs() as events:
        _, view = await api.request("PUT", path, json_body={"url": "http://10.1.2.3:3128", "username": "corp\\ps",
                                                            "password": PASSWORD})
    assert view == {"ps_id": ps.component_id, "url": "http://10.1.2.3:3128", "username": "corp\\ps",
                    "password_set": True}
    assert await api.get(path) == view
    doc = await settings(ps, version=before, wait_s=5)
    assert doc["version"] > before  # the change bumps the settings version: the PS applies it at run time
    assert doc["document"]["upload"] == {"proxy": {"url": "http://10.1.2.3:3128", "username": "corp\\ps",
                                                   "password": PASSWORD}}
    audit = await api.get("/v1/audit", params={"entity": "ps_uplinks"})
    assert audit["items"] and PASSWORD not in str(audit)
    assert PASSWORD not in repr(events) and PASSWORD.encode() not in await stored_bytes(env)

    _, view = await api.request("DELETE", path)
    assert view["url"] is None and view["password_set"] is False
    assert "upload" not in (await settings(ps))["document"]


@pytest.mark.parametrize("body", [
    {}, {"url": "https://p:3128"}, {"url": "http://p"}, {"url": "http://u:pw@p:3128"}, {"url": "http://p:3128/x"},
    {"url": "http://p:3128?a=1"}, {"url": "http://p:70000"}, {"url": 5}, {"url": "http://p:3128", "password": "x"},
    {"url": "http://p:3128", "username": ""}, {"url": "http://p:3128", "username": "a:b", "password": "x"},
    {"url": "http://p:3128", "extra": 1}])
def test_bad_proxy_bodies_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(errors.BadRequest) as exc:
        psconfig.parse_proxy(body)
    assert exc.value.message  # names the rule


async def test_bandwidth_set_show_clear_and_bad_input(site: Site) -> None:
    api = site.env.admin._api
    ps = await site.ps()
    path = f"/v1/ps/{ps.component_id}/bandwidth"
    assert await api.get(path) == {"ps_id": ps.component_id, "bytes_per_s": 0, "windows": []}
    body = {"bytes_per_s": 20 * MB, "windows": [{"from": "08:00", "to": "18:00", "bytes_per_s": 5 * MB}]}
    _, view = await api.request("PUT", path, json_body=body)
    assert view == {"ps_id": ps.component_id, **body}
    assert (await settings(ps))["document"]["upload"] == {"bandwidth": body}

    bad: Any
    for bad in ({"bytes_per_s": -1}, {"bytes_per_s": "5"}, {"windows": []}, {"bytes_per_s": 1, "x": 1},
                {"bytes_per_s": 1, "windows": [{"from": "25:00", "to": "18:00", "bytes_per_s": 1}]}):
        status, reply = await raw(site.env.url, api._ssl, "PUT", path, bad)
        assert (status, reply["code"]) == (400, "bad_request"), reply
    status, reply = await raw(site.env.url, api._ssl, "PUT", path, [1])
    assert status == 400
    assert await api.get(path) == view  # nothing changed

    status, reply = await raw(site.env.url, api._ssl, "PUT", f"/v1/ps/{'ee' * 16}/bandwidth", body)
    assert status == 404
    status, reply = await raw(site.env.url, api._ssl, "GET", "/v1/ps/not-an-id/bandwidth")
    assert status == 400
    mt = await site.mt()
    status, reply = await raw(site.env.url, api._ssl, "PUT", f"/v1/ps/{mt.component_id}/proxy", {"url": "http://p:1"})
    assert status == 404  # an MT is not a process server

    _, proxy = await api.request("PUT", f"/v1/ps/{ps.component_id}/proxy", json_body={"url": "http://p:1"})
    _, view = await api.request("DELETE", path)
    assert view == {"ps_id": ps.component_id, "bytes_per_s": 0, "windows": []}
    assert (await settings(ps))["document"]["upload"] == {"proxy": {"url": "http://p:1"}}  # the proxy stays
    status, _ = await raw(site.env.url, ps.ssl, "PUT", path, body)
    assert status == 403  # only an admin


def test_cli_parsing_is_pure() -> None:
    assert cli_ps_uplink.mb_s("2.5") == 2_500_000
    assert cli_ps_uplink.window("08:00-18:00=5") == {"from": "08:00", "to": "18:00", "bytes_per_s": 5 * MB}
    for bad in ("x", "-1"):
        with pytest.raises(errors.BadRequest):
            cli_ps_uplink.mb_s(bad)
    with pytest.raises(errors.BadRequest):
        cli_ps_uplink.window("08:00=5")
    args = argparse.Namespace(url="http://p:3128", username="u")
    assert cli_ps_uplink.proxy_body(args, io.StringIO(PASSWORD + "\n")) == {"url": "http://p:3128", "username": "u",
                                                                           "password": PASSWORD}
    assert cli_ps_uplink.describe({"ps_id": "p", "url": "http://p:1", "username": "u", "password_set": True}) == [
        "PS p: proxy http://p:1, user u, password set"]
    assert cli_ps_uplink.describe({"ps_id": "p", "bytes_per_s": 0, "windows": [
        {"from": "08:00", "to": "18:00", "bytes_per_s": 5 * MB}]}) == ["PS p: no limit", "  08:00-18:00: 5 MB/s"]
