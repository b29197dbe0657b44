"""Recovery plans: pure validation of groups and actions, and CRUD through the API."""

from __future__ import annotations

from typing import Any

import pytest
from cshelpers import Site, raw

from common import errors
from cs import plans

A, B, C = "a" * 32, "b" * 32, "c" * 32
SCRIPT = {"kind": "script", "name": "stop-app", "script": "systemctl stop app"}
MANUAL = {"kind": "manual", "name": "check-dns", "instruction": "Point www at the recovered site"}


def test_groups_and_actions_are_checked() -> None:
    groups = plans.parse_groups([{"machines": [A], "pre": [SCRIPT]}, {"machines": [B, C], "post": [MANUAL]}])
    assert groups == [{"machines": [A], "pre": [{**SCRIPT, "timeout_s": 300}], "post": []},
                      {"machines": [B, C], "pre": [], "post": [MANUAL]}]
    bad: list[Any] = [
        [], [{"machines": []}], [{"machines": [A]}, {"machines": [A]}],  # a machine twice
        [{"machines": [A, A]}], [{"machines": ["nope"]}], [{"machines": [A], "extra": 1}],
        [{"machines": [A], "pre": [{"kind": "reboot", "name": "x"}]}],
        [{"machines": [A], "pre": [{"kind": "script", "name": "x", "script": "  "}]}],
        [{"machines": [A], "pre": [{**SCRIPT, "timeout_s": 0}]}],
        [{"machines": [A], "post": [{"kind": "manual", "name": "x"}]}],
        [{"machines": [A], "post": [{**MANUAL, "script": "rm -rf /"}]}],
        [{"machines": [A], "pre": [SCRIPT] * (plans.MAX_ACTIONS + 1)}], "not a list"]
    for groups_body in bad:
        with pytest.raises(errors.BadRequest):
            plans.parse_groups(groups_body)
    with pytest.raises(errors.BadRequest):
        plans.parse({"name": "p", "groups": [{"machines": [A]}], "owner": "me"}, create=True)


async def test_plans_crud(site: Site) -> None:
    env = site.env
    api = env.admin._api
    db, _ = await site.agent("db1")
    web, _ = await site.agent("web1")
    body = {"name": "erp", "description": "ERP: database first",
            "groups": [{"machines": [db.component_id], "post": [MANUAL]},
                       {"machines": [web.component_id], "pre": [SCRIPT]}]}
    created = await api.post("/v1/plans", body)
    assert created["machines"] == 2 and created["groups"][1]["pre"][0]["timeout_s"] == 300
    assert (await api.get("/v1/plans/erp"))["groups"] == created["groups"]
    _, changed = await api.request("PATCH", "/v1/plans/erp",
                                   json_body={"groups": [{"machines": [db.component_id, web.component_id]}]})
    assert changed["machines"] == 2 and len(changed["groups"]) == 1 and changed["description"] == body["description"]
    for method, path, payload, code in (
            ("POST", "/v1/plans", body, 409),
            ("POST", "/v1/plans", {**body, "name": "x", "groups": [{"machines": ["f" * 32]}]}, 404),
            ("PATCH", "/v1/plans/erp", {"groups": []}, 400),
            ("GET", "/v1/plans/none", None, 404)):
        status, reply = await raw(env.url, api._ssl, method, path, payload)
        assert status == code, (method, path, reply)
    assert [p["name"] for p in (await api.get("/v1/plans"))["items"]] == ["erp"]
    await api.request("DELETE", "/v1/plans/erp")
    assert (await api.get("/v1/plans"))["items"] == []
